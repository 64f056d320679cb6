"""FHIR export: pain reports as R4 Observations (LOINC 72514-3) in a Bundle, served to the
patient and to clinicians on their care team (audited), printed by the command line, and
sent to a FHIR server as transaction Bundles: retried with backoff when the server fails,
each resource there once, a delete deleted there too. Every Bundle and resource is
validated with the `fhir.resources` models (R4B, the R4 line of fhir.resources 7+)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from storage.care_team import grant
from tests.support import (
    TEST_SECRET,
    TIMEOUT_S,
    Gateway,
    eventually,
    gateway_env,
    make_settings,
    sample,
    serve_app,
    serve_gateway,
)
from tests.test_pain_reports import delete, pain_report
from tests.test_sync import message, push, thread
from tests.wsclient import clinician_token, patient_token, session

LOINC = {"system": "http://loinc.org", "code": "72514-3"}


def validated(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The Bundle checked against the R4B models, whole and resource by resource."""
    Bundle.model_validate(bundle)
    resources = [entry["resource"] for entry in bundle["entry"] if "resource" in entry]
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resources


def observations(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in validated(bundle) if r["resourceType"] == "Observation"}


async def reports_of(ws: Any, patient_thread: uuid.UUID) -> dict[str, uuid.UUID]:
    """Three reports: yesterday's 7 (lower back, in the thread), today's 4, an old one."""
    ids = {"yesterday": uuid.uuid4(), "today": uuid.uuid4(), "old": uuid.uuid4()}
    now = datetime.now(UTC)
    ack = await push(
        ws,
        "p",
        thread("t", patient_thread),
        pain_report(
            "y",
            ids["yesterday"],
            region="lower back",
            qualities=["aching", "dull"],
            note="worse after sitting",
            recorded_at=(now - timedelta(days=1)).isoformat(),
            thread_id=str(patient_thread),
        ),
        pain_report("n", ids["today"], intensity=4, recorded_at=now.isoformat()),
        pain_report(
            "o", ids["old"], intensity=9, recorded_at=(now - timedelta(days=60)).isoformat()
        ),
    )
    assert len(ack["applied"]) == 4
    return ids


async def test_the_patient_and_their_care_team_read_the_record_as_a_fhir_bundle(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, clinician, t = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    async with session(gateway.ws_url, patient_token(patient)) as (ws, _):
        ids = await reports_of(ws, t)
        await push(ws, "m", message("m", t, "My lower back hurts when I sit."))
    assert (await gateway.services.summaries.run(patient_id=patient)).summarized == 1
    url = f"/v1/patients/{patient}/fhir"
    week_ago = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
        own = await http.get(url, headers=bearer(patient_token(patient)))
        assert own.status_code == 200
        assert own.headers["content-type"] == "application/fhir+json"
        bundle = own.json()
        assert bundle["type"] == "collection"
        found = observations(bundle)
        assert set(found) == {str(i) for i in ids.values()}
        seven = found[str(ids["yesterday"])]
        assert seven["code"]["coding"][0] | LOINC == seven["code"]["coding"][0]
        assert seven["valueInteger"] == 7 and seven["status"] == "final"
        assert seven["subject"] == {"reference": f"Patient/{patient}"}
        assert seven["bodySite"] == {"text": "lower back"}
        assert {"text": "Quality: aching, dull"} in seven["note"]
        assert {"text": "worse after sitting"} in seven["note"]
        assert seven["effectiveDateTime"].endswith("Z")
        [patient_resource] = [r for r in validated(bundle) if r["resourceType"] == "Patient"]
        assert patient_resource["id"] == str(patient)

        # A session: a time span, or one thread.
        recent = await http.get(
            url, params={"since": week_ago}, headers=bearer(patient_token(patient))
        )
        assert set(observations(recent.json())) == {str(ids["yesterday"]), str(ids["today"])}
        threaded = await http.get(
            url, params={"thread_id": str(t)}, headers=bearer(patient_token(patient))
        )
        assert set(observations(threaded.json())) == {str(ids["yesterday"])}
        [summary] = [
            r for r in validated(threaded.json()) if r["resourceType"] == "DocumentReference"
        ]
        assert summary["id"] == str(t) and summary["subject"] == {"reference": f"Patient/{patient}"}
        text = base64.b64decode(summary["content"][0]["attachment"]["data"]).decode()
        assert text == "The patient said: My lower back hurts when I sit."

        # A clinician on the care team reads it, and the trail says so.
        read = await http.get(url, headers=bearer(clinician_token(clinician)))
        assert read.status_code == 200 and len(observations(read.json())) == 3
        trail = await db.fetch(
            "SELECT actor_id, action, outcome FROM access_audit WHERE patient_id = $1", patient
        )
        assert (clinician, "fhir_export", "allowed") in [tuple(r) for r in trail]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("who", "query", "status", "message"),
    [
        ("nobody", {}, 401, "Authorization: a Bearer token is required"),
        ("other patient", {}, 403, "patient_id: a patient reads only their own record"),
        ("clinician without grant", {}, 403, "patient_id: not on this patient's care team"),
        ("patient", {"since": "last week"}, 422, "since: "),
        ("patient", {"thread_id": "knee"}, 422, "thread_id: "),
        ("patient", {"sort": "date"}, 422, "sort: Extra inputs are not permitted"),
    ],
)
async def test_a_refused_or_bad_fhir_request_says_why(
    gateway: Gateway,
    db: asyncpg.Connection,
    who: str,
    query: dict[str, str],
    status: int,
    message: str,
) -> None:
    patient = uuid.uuid4()
    tokens = {
        "patient": patient_token(patient),
        "other patient": patient_token(),
        "clinician without grant": clinician_token(),
    }
    headers = bearer(tokens[who]) if who in tokens else {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
        answer = await http.get(f"/v1/patients/{patient}/fhir", params=query, headers=headers)
    assert answer.status_code == status
    assert answer.json()["error"]["message"].startswith(message)
    if status == 403:  # refusals are written in batches, a moment later

        async def recorded() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM access_audit WHERE patient_id = $1 "
                    "AND outcome = 'denied'",
                    patient,
                )
            )

        await eventually(recorded, what="the refusal in the audit trail")


async def test_the_command_line_prints_the_bundle(
    gateway: Gateway, database_url: str, tmp_path: Path
) -> None:
    patient = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient)) as (ws, _):
        ids = await reports_of(ws, uuid.uuid4())
    since = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway",
            "fhir-export",
            "--patient",
            str(patient),
            "--since",
            since,
        ],
        cwd=tmp_path,
        env=gateway_env(SECRET_KEY=TEST_SECRET, DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert set(observations(json.loads(done.stdout))) == {str(ids["yesterday"]), str(ids["today"])}


@dataclass
class FhirServer:
    """A stand-in FHIR server: applies transaction Bundles (PUT and DELETE by id), after
    failing the first `fail` of them with 503."""

    fail: int = 1
    url: str = ""
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    transactions: int = 0  # taken
    refused: int = 0
    tokens: list[str | None] = field(default_factory=list)

    async def take(self, request: Request) -> Response:
        self.tokens.append(request.headers.get("authorization"))
        if self.fail > 0:
            self.fail -= 1
            self.refused += 1
            return Response(status_code=503)
        bundle = json.loads(await request.body())
        validated(bundle)
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            target = entry["request"]["url"]
            if entry["request"]["method"] == "PUT":
                self.resources[target] = entry["resource"]
            else:
                self.resources.pop(target, None)
        self.transactions += 1
        return JSONResponse(
            {"resourceType": "Bundle", "type": "transaction-response", "entry": []},
            media_type="application/fhir+json",
        )


@pytest.fixture
async def fhir_server() -> AsyncIterator[FhirServer]:
    server = FhirServer()
    app = Starlette(routes=[Route("/fhir", server.take, methods=["POST"])])
    async with serve_app(app) as (_, url):
        server.url = f"{url}/fhir"
        yield server


async def test_reports_reach_the_fhir_server_once_despite_a_failure_and_deletes_follow(
    database_url: str, db: asyncpg.Connection, fhir_server: FhirServer
) -> None:
    patient = uuid.uuid4()
    settings = make_settings(
        fhir_webhook_url=fhir_server.url,
        fhir_webhook_token="fhir-secret",
        fhir_export_poll_s=0.05,
    )
    async with (
        serve_gateway(settings, database_url) as gw,
        session(gw.ws_url, patient_token(patient)) as (ws, _),
    ):
        t = uuid.uuid4()
        ids = await reports_of(ws, t)
        observation_urls = {f"Observation/{i}" for i in ids.values()}
        # The first Bundle is refused (503): kept, sent again after its backoff.

        async def all_there() -> bool:
            return observation_urls <= set(fhir_server.resources)

        await eventually(all_there, timeout=TIMEOUT_S * 2, what="the reports on the server")
        assert fhir_server.refused == 1
        assert set(fhir_server.resources) == observation_urls | {f"Patient/{patient}"}
        assert fhir_server.tokens[-1] == "Bearer fhir-secret"
        stored = fhir_server.resources[f"Observation/{ids['today']}"]
        assert stored["valueInteger"] == 4

        async def nothing_left() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM fhir_outbox") == 0)

        await eventually(nothing_left, what="the outbox to empty once the server took it")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{gw.url}/metrics")).text
        assert sample(metrics, "fhir_export_failures_total") >= 1

        # A delete deletes it there; an edit replaces it (same id, nothing twice).
        taken = fhir_server.transactions
        await push(ws, "d", delete("gone", ids["old"]), pain_report("e", ids["today"], intensity=2))

        async def followed() -> bool:
            return (
                fhir_server.transactions > taken
                and f"Observation/{ids['old']}" not in fhir_server.resources
                and fhir_server.resources[f"Observation/{ids['today']}"]["valueInteger"] == 2
            )

        await eventually(followed, timeout=TIMEOUT_S * 2, what="the delete and the edit")

        # A thread's summary goes as a DocumentReference; a deleted message takes it off.
        said = uuid.uuid4()
        await push(ws, "s", message("s", t, "My lower back hurts when I sit.", id=said))
        assert (await gw.services.summaries.run(patient_id=patient)).summarized == 1
        document = f"DocumentReference/{t}"

        async def summary_there() -> bool:
            return document in fhir_server.resources

        await eventually(summary_there, timeout=TIMEOUT_S * 2, what="the summary on the server")
        attached = fhir_server.resources[document]["content"][0]["attachment"]["data"]
        assert base64.b64decode(attached).decode().endswith("My lower back hurts when I sit.")
        erase = {"mutation_id": "x", "entity": "message", "op": "delete", "id": str(said)}
        assert (await push(ws, "x", erase))["applied"] == ["x"]

        async def summary_gone() -> bool:
            return document not in fhir_server.resources

        await eventually(summary_gone, timeout=TIMEOUT_S * 2, what="the summary deleted there")
        assert fhir_server.resources[f"Observation/{ids['today']}"]["valueInteger"] == 2
        assert len([k for k in fhir_server.resources if k.startswith("Observation/")]) == 2
