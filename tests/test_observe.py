"""Clinicians observing patients: the care team decides, the observer sees the patient's
session live and writes nothing, the patient's devices see who watches, a revoked or
expired grant ends the observation within a second on every process, and every access
(allowed or not) is in the audit trail."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from gateway.auth import issue_token
from storage.care_team import grant
from tests.chatkit import Upstream, chat_send, messages_of, slow_reply, until
from tests.conftest import RedisServer
from tests.support import TEST_SECRET, Gateway, eventually, make_settings, serve_gateway
from tests.wsclient import clinician_token, expect_silence, patient_token, recv, send, session


def observe(patient: uuid.UUID, frame_id: str = "o1") -> dict[str, Any]:
    return {"type": "observe", "id": frame_id, "patient_id": str(patient)}


def admin_headers() -> dict[str, str]:
    token = issue_token(TEST_SECRET, role="admin", sub=uuid.uuid4())
    return {"Authorization": f"Bearer {token}"}


async def audit_rows(db: asyncpg.Connection, patient: uuid.UUID) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT actor_id, actor_role, action, outcome, reason FROM access_audit "
        "WHERE patient_id = $1 ORDER BY id",
        patient,
    )


async def start_observing(ws: ClientConnection, patient: uuid.UUID) -> dict[str, Any]:
    """observe; returns the snapshot after checking the ack."""
    await send(ws, observe(patient))
    assert await recv(ws) == {"type": "ack", "ref": "o1"}
    snapshot = await recv(ws)
    assert snapshot["type"] == "observe.snapshot"
    return snapshot


async def test_an_observer_sees_the_patients_session_live_and_the_devices_see_the_observer(
    chat_gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, clinician, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    async with session(chat_gateway.ws_url, patient_token(patient, "headset")) as (headset, _):
        await send(headset, chat_send(thread, "My back aches", client_message_id="a"))
        await until(headset, "chat.done")
        await until(headset, "sync.delta")  # the reply stored
        async with session(chat_gateway.ws_url, clinician_token(clinician)) as (watcher, _):
            snapshot = await start_observing(watcher, patient)
            assert snapshot["patient_id"] == str(patient) and snapshot["sync_version"] == 3
            assert snapshot["thread_id"] == str(thread)
            assert [(m["role"], m["content"]) for m in snapshot["messages"]] == [
                ("user", "My back aches"),
                ("assistant", "Hello, there."),
            ]
            presence = await recv(headset, skip=())
            while presence["type"] != "presence" or not presence["observers"]:
                presence = await recv(headset, skip=())
            [observer] = presence["observers"]
            assert observer["clinician_id"] == str(clinician)
            # Live: the next exchange, every frame, each naming the patient.
            await send(headset, chat_send(thread, "It is better today", "c2"))
            seen, done = await until(watcher, "chat.done")
            kinds = {f["type"] for f in seen}
            assert {"chat.message", "chat.delta", "sync.delta"} <= kinds
            assert all(f["patient_id"] == str(patient) for f in [*seen, done])
            await send(watcher, {"type": "unobserve", "id": "u1", "patient_id": str(patient)})
            assert (await until(watcher, "ack"))[1] == {"type": "ack", "ref": "u1"}
            await send(headset, chat_send(thread, "Thanks", "c3"))
            await until(headset, "chat.done")
            await expect_silence(watcher, 0.3)
    actions = [(r["action"], r["outcome"]) for r in await audit_rows(db, patient)]
    assert actions[:2] == [("observe", "allowed"), ("snapshot", "allowed")]

    async def ended() -> bool:
        rows = await audit_rows(db, patient)
        return any((r["action"], r["reason"]) == ("observe", "unobserve") for r in rows)

    await eventually(ended, what="the end of the observation in the trail")


async def test_a_clinician_not_on_the_team_gets_forbidden_and_nothing(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, clinician = uuid.uuid4(), uuid.uuid4()
    async with (
        session(gateway.ws_url, patient_token(patient)) as (device, _),
        session(gateway.ws_url, clinician_token(clinician)) as (watcher, _),
    ):
        await send(watcher, observe(patient))
        error = (await recv(watcher))["error"]
        assert (error["code"], error["ref"]) == ("forbidden", "o1")
        assert error["message"] == "patient_id: not on this patient's care team"
        pull = {"type": "sync.pull", "id": "p", "since": 0, "patient_id": str(patient)}
        await send(watcher, pull)
        assert (await recv(watcher))["error"]["message"] == "patient_id: not observing this patient"
        await send(
            device,
            {
                "type": "sync.push",
                "id": "s",
                "mutations": [
                    {
                        "mutation_id": "m",
                        "entity": "thread",
                        "op": "upsert",
                        "id": str(uuid.uuid4()),
                        "data": {"title": "t"},
                    }
                ],
            },
        )
        await until(device, "sync.ack")
        await expect_silence(watcher, 0.3)

    async def audited() -> bool:
        rows = await audit_rows(db, patient)
        return [(r["action"], r["outcome"], r["reason"]) for r in rows] == [
            ("observe", "denied", "not_on_team"),
            ("sync.pull", "denied", "not_observing"),
        ]

    await eventually(audited, what="both refusals in the trail")


async def test_observers_write_nothing_and_can_pull_what_they_observe(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, clinician, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    async with session(gateway.ws_url, clinician_token(clinician)) as (watcher, _):
        await start_observing(watcher, patient)
        writes = [
            chat_send(thread, "I am the clinician"),
            {
                "type": "sync.push",
                "id": "w2",
                "mutations": [
                    {
                        "mutation_id": "m",
                        "entity": "thread",
                        "op": "upsert",
                        "id": str(thread),
                        "data": {"title": "x"},
                    }
                ],
            },
            {
                "type": "audio.start",
                "id": "w3",
                "stream_id": str(uuid.uuid4()),
                "thread_id": str(thread),
                "format": "wav",
            },
        ]
        for frame in writes:
            await send(watcher, frame)
            error = (await recv(watcher))["error"]
            assert error["code"] == "forbidden" and error["ref"] == frame["id"]
        await send(watcher, {"type": "sync.pull", "id": "p1", "since": 0})
        assert (await recv(watcher))["error"]["message"] == "patient_id: required for clinicians"
        pull = {"type": "sync.pull", "id": "p2", "since": 0, "patient_id": str(patient)}
        await send(watcher, pull)
        changes = await recv(watcher)
        assert changes["type"] == "sync.changes" and changes["version"] == 0
    assert await db.fetchval("SELECT count(*) FROM threads WHERE id = $1", thread) == 0
    assert await db.fetchval("SELECT count(*) FROM changes WHERE patient_id = $1", patient) == 0

    async def audited() -> bool:
        # The writes name no patient: the clinician's rows say who tried what.
        rows = await db.fetch(
            "SELECT action, outcome, patient_id FROM access_audit WHERE actor_id = $1",
            clinician,
        )
        return sorted((r["action"], r["outcome"], r["patient_id"]) for r in rows) == sorted(
            [
                ("observe", "allowed", patient),
                ("snapshot", "allowed", patient),
                ("chat.send", "denied", None),
                ("sync.push", "denied", None),
                ("audio.start", "denied", None),
                ("sync.pull", "denied", None),
                ("pull", "allowed", patient),
                ("observe", "ended", patient),  # the socket closed
            ]
        )

    await eventually(audited, what="the refused writes and the pull in the trail")


async def test_joining_mid_reply_gives_the_text_so_far_then_every_later_delta_once(
    chat_gateway: Gateway, upstream: Upstream, db: asyncpg.Connection
) -> None:
    patient, clinician, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    slow_reply(upstream.behaviour, tokens=60, delay_s=0.02)
    async with (
        session(chat_gateway.ws_url, patient_token(patient)) as (device, _),
        session(chat_gateway.ws_url, clinician_token(clinician)) as (watcher, _),
    ):
        await send(device, chat_send(thread, "Tell me about pacing"))
        for _ in range(5):
            await until(device, "chat.delta")
        await start_observing(watcher, patient)
        resume = await recv(watcher)
        assert resume["type"] == "chat.resume" and resume["seq"] >= 4
        frames, done = await until(watcher, "chat.done")
        later = [f for f in frames if f["type"] == "chat.delta"]
        assert [d["seq"] for d in later] == list(
            range(resume["seq"] + 1, resume["seq"] + 1 + len(later))
        )
        text = resume["text"] + "".join(d["delta"] for d in later)
    [_, reply] = await messages_of(db, thread)
    assert text == reply["content"] == "".join(upstream.behaviour.tokens)


@pytest.mark.parametrize("gateway", [{"observe_recheck_s": 0.2}], indirect=True)
async def test_an_expired_grant_ends_the_observation(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, clinician = uuid.uuid4(), uuid.uuid4()
    expires = datetime.now(UTC) + timedelta(seconds=1)
    await grant(db, clinician, patient, granted_by=uuid.uuid4(), expires_at=expires)
    async with session(gateway.ws_url, clinician_token(clinician)) as (watcher, _):
        await start_observing(watcher, patient)
        error = (await recv(watcher, timeout=5))["error"]
        ended_at = datetime.now(UTC)
        assert (error["code"], error["patient_id"]) == ("forbidden", str(patient))
        assert ended_at - expires < timedelta(seconds=1)


async def test_revoking_on_one_process_ends_an_observation_on_the_other_within_a_second(
    database_url: str,
    redis_server: RedisServer,
    second_process: str,
    upstream: Upstream,
    db: asyncpg.Connection,
) -> None:
    patient, clinician, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    slow_reply(upstream.behaviour, tokens=150, delay_s=0.02)
    settings = make_settings(redis_url=redis_server.url, openai_base_url=upstream.url)
    async with serve_gateway(settings, database_url) as first:
        async with httpx.AsyncClient(base_url=first.url) as http:
            body = {"clinician_id": str(clinician), "patient_id": str(patient)}
            granted = await http.post("/admin/care-team", json=body, headers=admin_headers())
            assert granted.status_code == 201
            async with (
                session(first.ws_url, patient_token(patient)) as (device, _),
                session(second_process, clinician_token(clinician)) as (watcher, _),
            ):
                await start_observing(watcher, patient)
                await send(device, chat_send(thread, "A long answer please"))
                await until(watcher, "chat.delta")  # streaming to the observer
                revoked_at = time.monotonic()
                path = f"/admin/care-team/{clinician}/{patient}"
                assert (await http.delete(path, headers=admin_headers())).status_code == 204
                last_seq = -1
                while True:
                    frame = await recv(watcher)
                    if frame["type"] == "error":
                        break
                    last_seq = frame.get("seq", last_seq)
                assert time.monotonic() - revoked_at < 1.0
                assert frame["error"]["patient_id"] == str(patient)
                await expect_silence(watcher, 0.5)
                # ... while the reply went on streaming to the patient's device.
                seen, _ = await until(device, "chat.done")
                assert max(f["seq"] for f in seen if f["type"] == "chat.delta") > last_seq + 10


async def test_the_audit_trail_is_append_only_and_pruned_only_before_the_retention(
    db: asyncpg.Connection,
) -> None:
    patient = uuid.uuid4()
    await db.execute(
        "INSERT INTO access_audit (at, actor_role, patient_id, action, outcome) VALUES "
        "(now() - interval '7 years', 'system', $1, 'old', 'allowed'), "
        "(now(), 'system', $1, 'new', 'allowed')",
        patient,
    )
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("UPDATE access_audit SET action = 'x' WHERE patient_id = $1", patient)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("DELETE FROM access_audit WHERE patient_id = $1", patient)
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await db.execute("TRUNCATE access_audit")
    gone = await db.fetchval("SELECT painar_prune_audit(now() - interval '6 years')")
    assert gone == 1
    assert [
        r["action"]
        for r in await db.fetch("SELECT action FROM access_audit WHERE patient_id = $1", patient)
    ] == ["new"]


async def test_the_admin_api_grants_lists_revokes_and_reads_the_trail(
    gateway: Gateway,
) -> None:
    patient, clinician = uuid.uuid4(), uuid.uuid4()
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        body = {"clinician_id": str(clinician), "patient_id": str(patient)}
        assert (await http.post("/admin/care-team", json=body)).status_code == 401
        patient_headers = {"Authorization": f"Bearer {patient_token(patient)}"}
        refused = await http.post("/admin/care-team", json=body, headers=patient_headers)
        assert refused.status_code == 403
        admin = admin_headers()
        bad = await http.post("/admin/care-team", json={**body, "clinician_id": "x"}, headers=admin)
        assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("clinician_id")
        until = "2099-01-01T00:00:00Z"
        made = await http.post(
            "/admin/care-team", json={**body, "expires_at": until}, headers=admin
        )
        assert made.status_code == 201 and made.json()["expires_at"].startswith("2099-01-01")
        listed = await http.get(
            "/admin/care-team", params={"patient_id": str(patient)}, headers=admin
        )
        assert [g["clinician_id"] for g in listed.json()["grants"]] == [str(clinician)]
        path = f"/admin/care-team/{clinician}/{patient}"
        assert (await http.delete(path, headers=admin)).status_code == 204
        assert (await http.delete(path, headers=admin)).status_code == 404
        assert (await http.delete("/admin/care-team/x/y", headers=admin)).status_code == 422
        trail = await http.get("/admin/audit", params={"patient_id": str(patient)}, headers=admin)
        events = trail.json()["events"]
        assert [(e["action"], e["outcome"]) for e in events] == [
            ("POST admin", "denied"),  # the patient's own try, above
            ("grant", "allowed"),
            ("revoke", "allowed"),
            ("revoke", "denied"),
        ]
        assert {e["actor_role"] for e in events} == {"patient", "admin"}
        assert (await http.get("/admin/audit", headers=admin)).status_code == 422
