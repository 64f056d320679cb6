"""`painar-gateway care-team grant|revoke|list`, `audit`, `revoke`, `reembed`, `erase`,
`fhir-export` and `summarize`: care teams, the access audit trail (the admin HTTP API does
the same), revoked subjects, the embedding queue, erasure, a patient's record as FHIR and
thread summaries, from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from gateway.app import summary_job
from gateway.export.fhir import collection
from gateway.observe.care_team import CareTeams
from gateway.providers import make_models
from gateway.realtime.broker.choose import broker_for
from gateway.realtime.hub import Hub
from gateway.settings import Settings
from gateway.sync.writes import ChangeWriter
from storage.audit import AuditEvent, record
from storage.care_team import CLI_GRANTER, Grant
from storage.changes import Mutation
from storage.database import Database
from storage.embedding_queue import enqueue_all
from storage.erasure import erase_remains, live_pain_reports, live_threads
from storage.pain_reports import reports_between
from storage.revocations import revoke
from storage.summaries import thread_summaries

EXIT_NOT_FOUND = 3


def add_commands(commands: Any) -> None:
    """The admin sub-commands, on the CLI's sub-parsers."""
    team = commands.add_parser("care-team", help="grant, revoke or list care-team members")
    actions = team.add_subparsers(dest="action", required=True)
    grant = actions.add_parser("grant", help="let a clinician observe a patient")
    revoke = actions.add_parser("revoke", help="end a clinician's access to a patient")
    for sub in (grant, revoke):
        sub.add_argument("--clinician", type=UUID, required=True, help="clinician (UUID)")
        sub.add_argument("--patient", type=UUID, required=True, help="patient (UUID)")
    grant.add_argument("--expires", type=_when, help="ISO-8601 time the grant ends (UTC if bare)")
    listing = actions.add_parser("list", help="the grants in force")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--patient", type=UUID, help="of one patient")
    which.add_argument("--clinician", type=UUID, help="of one clinician")
    revoke_tokens = commands.add_parser(
        "revoke", help="revoke every token of a subject issued until now (closes its sockets)"
    )
    revoke_tokens.add_argument("--sub", type=UUID, required=True, help="subject (UUID)")
    reembed = commands.add_parser(
        "reembed", help="queue messages for embedding again (backfill, or a new model)"
    )
    reembed.add_argument("--patient", type=UUID, help="one patient's (default: everyone's)")
    erase = commands.add_parser(
        "erase", help="erase every thread, message and memory of a patient (devices see deletes)"
    )
    erase.add_argument("--patient", type=UUID, required=True, help="patient (UUID)")
    export = commands.add_parser(
        "fhir-export", help="print a patient's pain reports as a FHIR R4 Bundle (JSON)"
    )
    export.add_argument("--patient", type=UUID, required=True, help="patient (UUID)")
    export.add_argument("--since", type=_when, help="ISO-8601: reports recorded from then")
    export.add_argument("--until", type=_when, help="ISO-8601: reports recorded before then")
    export.add_argument("--thread", type=UUID, help="one thread's reports (a session)")
    summarize = commands.add_parser(
        "summarize", help="summarise every thread changed since its last summary, now"
    )
    summarize.add_argument("--patient", type=UUID, help="one patient's threads")
    summarize.add_argument("--thread", type=UUID, help="one thread")
    audit = commands.add_parser("audit", help="print a patient's access audit trail")
    audit.add_argument("--patient", type=UUID, required=True, help="patient (UUID)")
    audit.add_argument("--since", type=_when, help="ISO-8601 time to start from")
    audit.add_argument("--format", choices=["json", "table"], default="table")


def run(
    args: argparse.Namespace, dsn_for: Callable[[], AbstractContextManager[str]], settings: Settings
) -> int:
    with dsn_for() as dsn:
        return asyncio.run(_run(args, dsn, settings))


async def _run(args: argparse.Namespace, dsn: str, settings: Settings) -> int:
    redis_url = settings.redis_url
    # A summary run holds the run's connection and writes alongside: a few more.
    db = Database(
        dsn, min_size=1, max_size=min(settings.db_pool_max, 2 + 2 * settings.summary_concurrency)
    )
    await db.open()
    try:
        teams = CareTeams(db)
        if args.command == "audit":
            return await _audit(teams, args)
        if args.command == "revoke":
            async with db.acquire() as conn:
                async with conn.transaction():
                    done = await revoke(conn, args.sub)
                    event = AuditEvent(
                        CLI_GRANTER, "admin", None, "revoke_tokens", "allowed", f"sub {args.sub}"
                    )
                    await record(conn, [event])
            print(f"revoked every token of {args.sub} issued until {done.revoked_before}")
            return 0
        if args.command == "erase":
            return await _erase(db, args.patient, redis_url)
        if args.command == "fhir-export":
            return await _fhir_export(db, args)
        if args.command == "summarize":
            return await _summarize(db, args, settings, redis_url)
        if args.command == "reembed":
            async with db.acquire() as conn:
                queued = await enqueue_all(conn, args.patient)
            print(f"queued {queued} message(s); running gateways embed them")
            return 0
        if args.action == "grant":
            granted = await teams.grant(CLI_GRANTER, args.clinician, args.patient, args.expires)
            print(_grant_line(granted))
        elif args.action == "revoke":
            if not await teams.revoke(CLI_GRANTER, args.clinician, args.patient):
                print("painar-gateway care-team: no such grant", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(f"revoked clinician {args.clinician} for patient {args.patient}")
        else:
            for grant in await teams.grants(patient_id=args.patient, clinician_id=args.clinician):
                print(_grant_line(grant))
        return 0
    finally:
        await db.close()


async def _erase(db: Database, patient_id: UUID, redis_url: str | None) -> int:
    """Deletes the patient's threads and pain reports through the change log (published,
    so open devices delete them at once), then blanks what remains (storage/erasure.py)."""
    hub = Hub(broker_for(redis_url))
    try:
        async with db.acquire() as conn:
            threads = await live_threads(conn, patient_id)
            reports = await live_pain_reports(conn, patient_id)
        deletes = [Mutation("thread", "delete", thread_id) for thread_id in threads]
        deletes += [Mutation("pain_report", "delete", report_id) for report_id in reports]
        written = await ChangeWriter(db, hub).write(patient_id, deletes, device_id=None)
        async with db.acquire() as conn:
            remains = await erase_remains(conn, patient_id)
            event = AuditEvent(CLI_GRANTER, "admin", patient_id, "erase", "allowed")
            await record(conn, [event])
    finally:
        await hub.close()
    print(
        f"erased patient {patient_id}: {len(threads)} thread(s) and "
        f"{len(reports)} pain report(s) deleted "
        f"(sync version {written.version}), {remains.changes} earlier change(s) "
        f"and {remains.messages} other message(s) blanked"
    )
    return 0


async def _summarize(
    db: Database, args: argparse.Namespace, settings: Settings, redis_url: str | None
) -> int:
    """One summary run now (published, so open devices get the summaries at once)."""
    hub = Hub(broker_for(redis_url))
    models = make_models(settings)
    try:
        job = summary_job(settings, db, ChangeWriter(db, hub), models)
        result = await job.run(patient_id=args.patient, thread_id=args.thread)
    finally:
        await models.close()
        await hub.close()
    print(
        f"summarised {result.summarized} thread(s); {result.failed} failed, "
        f"{result.unchanged} unchanged"
    )
    return 0 if result.failed == 0 else 1


async def _fhir_export(db: Database, args: argparse.Namespace) -> int:
    async with db.acquire() as conn:
        event = AuditEvent(CLI_GRANTER, "admin", args.patient, "fhir_export", "allowed", "cli")
        await record(conn, [event])
        since, until, thread_id = args.since, args.until, args.thread
        reports = await reports_between(
            conn, args.patient, since=since, until=until, thread_id=thread_id
        )
        summaries = await thread_summaries(
            conn, args.patient, since=since, until=until, thread_id=thread_id
        )
    bundle = collection(args.patient, reports, datetime.now(UTC), summaries)
    print(json.dumps(bundle, indent=2))
    return 0


async def _audit(teams: CareTeams, args: argparse.Namespace) -> int:
    after = 0
    while True:
        page = await teams.trail(args.patient, since=args.since, after_id=after, limit=1000)
        for row in page.rows:
            event: dict[str, Any] = row.as_json()
            event["at"] = row.at.isoformat()
            if args.format == "json":
                print(json.dumps(event))
            else:
                print(
                    f"{event['at']}  {event['actor_role']:9} {event['actor_id']}  "
                    f"{event['action']:14} {event['outcome']:7} {event['reason'] or ''}"
                )
        if page.next_after is None:
            return 0
        after = page.next_after


def _grant_line(grant: Grant) -> str:
    until = grant.expires_at.isoformat() if grant.expires_at else "no expiry"
    return f"clinician {grant.clinician_id} patient {grant.patient_id} until {until}"


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text[:40]!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
