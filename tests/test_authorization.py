"""The authorization matrix: every client frame type and each REST route, sent about
patient P by everyone who could try — P's device, another patient Q's device, a clinician
on P's team observing P, the same clinician not observing, a clinician not on the team,
one whose grant was revoked, one whose grant expired, an admin — against the outcome
written here. Every refused cell stores nothing, gets no frame of P afterwards, and
leaves an audit row."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.auth import issue_token
from storage.care_team import grant, revoke
from tests.support import TEST_SECRET, Gateway, eventually
from tests.wsclient import (
    clinician_token,
    expect_close,
    expect_silence,
    open_socket,
    patient_token,
    recv,
    send,
    session,
)

P, Q = uuid.uuid4(), uuid.uuid4()
THREAD = uuid.uuid4()  # P's
STREAM = uuid.uuid4()


def frames() -> dict[str, dict[str, Any]]:
    """One frame of each type, about P (in the order sent; observe and unobserve last)."""
    message = {
        "mutation_id": f"m-{uuid.uuid4()}",
        "entity": "message",
        "op": "upsert",
        "id": str(uuid.uuid4()),
        "data": {"thread_id": str(THREAD), "role": "user", "content": "from the matrix"},
    }
    return {
        "ping": {"type": "ping", "ts": 1},
        "chat.send": {"type": "chat.send", "id": "f", "thread_id": str(THREAD), "text": "hi"},
        "chat.cancel": {"type": "chat.cancel", "id": "f", "response_id": str(uuid.uuid4())},
        "audio.append": {
            "type": "audio.append",
            "stream_id": str(STREAM),
            "seq": 0,
            "audio": "AA==",
        },
        "audio.commit": {"type": "audio.commit", "id": "f", "stream_id": str(STREAM)},
        "audio.cancel": {"type": "audio.cancel", "stream_id": str(STREAM)},
        "audio.start": {
            "type": "audio.start",
            "id": "f",
            "stream_id": str(uuid.uuid4()),
            "thread_id": str(THREAD),
            "format": "wav",
            "respond": False,
        },
        "sync.push": {"type": "sync.push", "id": "f", "mutations": [message]},
        "sync.pull": {"type": "sync.pull", "id": "f", "since": 0, "patient_id": str(P)},
        "unobserve": {"type": "unobserve", "id": "f", "patient_id": str(P)},
        "observe": {"type": "observe", "id": "f", "patient_id": str(P)},
    }


F = "forbidden"  # refused: stores nothing, audited
WRITES_FORBIDDEN = dict.fromkeys(
    [
        "chat.send",
        "chat.cancel",
        "audio.append",
        "audio.commit",
        "audio.cancel",
        "audio.start",
        "sync.push",
    ],
    F,
)
OUTSIDER = {"ping": "pong", **WRITES_FORBIDDEN, "sync.pull": F, "unobserve": "ack", "observe": F}
MATRIX: dict[str, dict[str, str]] = {
    "P": {
        "ping": "pong",
        "chat.send": "ack",
        "chat.cancel": "ack",
        "audio.append": "not_found",
        "audio.commit": "not_found",
        "audio.cancel": "not_found",
        "audio.start": "ack",
        "sync.push": "sync.ack",
        "sync.pull": "sync.changes",
        "unobserve": F,
        "observe": F,
    },
    "Q": {
        "ping": "pong",
        "chat.send": F,  # P's thread
        "chat.cancel": "ack",  # names no reply of Q's: nothing to stop
        "audio.append": "not_found",
        "audio.commit": "not_found",
        "audio.cancel": "not_found",
        "audio.start": "ack",  # Q's own stream; its transcript could reach only Q
        "sync.push": "sync.ack:forbidden",  # the mutation into P's thread is refused
        "sync.pull": F,
        "unobserve": F,
        "observe": F,
    },
    "observer": {
        "ping": "pong",
        **WRITES_FORBIDDEN,
        "sync.pull": "sync.changes",
        "unobserve": "ack",
        "observe": "ack",
    },
    "team, not observing": {**OUTSIDER, "observe": "ack"},
    "not on the team": OUTSIDER,
    "revoked": OUTSIDER,
    "expired": OUTSIDER,
}


def outcome(answer: dict[str, Any]) -> str:
    if answer["type"] == "error":
        return str(answer["error"]["code"])
    if answer["type"] == "sync.ack" and answer["rejected"]:
        return f"sync.ack:{answer['rejected'][0]['code']}"
    return str(answer["type"])


async def first_answer(ws: Any) -> dict[str, Any]:
    """The frame answering what was just sent (frames of the patient's own flows, such as
    chat replies and deltas, pass by)."""
    answers = {"error", "ack", "pong", "sync.ack", "sync.changes"}
    while True:
        frame = await recv(ws)
        if frame["type"] in answers:
            return frame


async def test_every_frame_and_route_about_a_patient_by_everyone(
    chat_gateway: Gateway, db: asyncpg.Connection
) -> None:
    gateway = chat_gateway
    clinicians = {name: uuid.uuid4() for name in ("team", "stranger", "revoked", "expired")}
    for name in ("team", "revoked"):
        await grant(db, clinicians[name], P, granted_by=uuid.uuid4())
    await revoke(db, clinicians["revoked"], P)
    past = datetime.now(UTC) - timedelta(minutes=1)
    await grant(db, clinicians["expired"], P, granted_by=uuid.uuid4(), expires_at=past)
    tokens = {
        "P": patient_token(P, "p-device"),
        "Q": patient_token(Q, "q-device"),
        "observer": clinician_token(clinicians["team"]),
        "team, not observing": clinician_token(clinicians["team"]),
        "not on the team": clinician_token(clinicians["stranger"]),
        "revoked": clinician_token(clinicians["revoked"]),
        "expired": clinician_token(clinicians["expired"]),
    }
    subs = {
        "P": P,
        "Q": Q,
        "observer": clinicians["team"],
        "team, not observing": clinicians["team"],
        "not on the team": clinicians["stranger"],
        "revoked": clinicians["revoked"],
        "expired": clinicians["expired"],
    }
    async with session(gateway.ws_url, tokens["P"]) as (p_socket, _):
        await send(
            p_socket,
            {
                "type": "sync.push",
                "id": "t",
                "mutations": [
                    {
                        "mutation_id": "t",
                        "entity": "thread",
                        "op": "upsert",
                        "id": str(THREAD),
                        "data": {"title": "P's thread"},
                    }
                ],
            },
        )
        assert (await first_answer(p_socket))["applied"] == ["t"]
    versions_before = await db.fetchval("SELECT sync_version FROM patients WHERE id = $1", P)

    got: dict[str, dict[str, str]] = {}
    refused: dict[str, int] = {}
    for actor in MATRIX:
        async with session(gateway.ws_url, tokens[actor]) as (ws, _):
            if actor == "observer":
                await send(ws, frames()["observe"])
                assert (await recv(ws))["type"] == "ack"
                assert (await recv(ws))["type"] == "observe.snapshot"
            got[actor] = {}
            for kind, frame in frames().items():
                await send(ws, frame)
                answer = await first_answer(ws)
                got[actor][kind] = outcome(answer)
                if kind == "observe" and answer["type"] == "ack":
                    assert (await recv(ws))["type"] == "observe.snapshot"
            refused[actor] = sum(1 for o in got[actor].values() if F in o)
            if actor not in ("P", "observer", "team, not observing"):
                # A refused actor gets no frame of P afterwards.
                async with session(gateway.ws_url, tokens["P"]) as (p_socket, _):
                    await send(
                        p_socket,
                        {
                            "type": "sync.push",
                            "id": "z",
                            "mutations": [
                                {
                                    "mutation_id": f"z-{actor}",
                                    "entity": "thread",
                                    "op": "upsert",
                                    "id": str(THREAD),
                                    "data": {"title": "renamed"},
                                }
                            ],
                        },
                    )
                    await first_answer(p_socket)
                await expect_silence(ws, 0.3)
    assert got == MATRIX

    # Refused cells stored nothing: every version of P came from P's own frames.
    writers = await db.fetch(
        "SELECT DISTINCT device_id FROM changes WHERE patient_id = $1 AND device_id IS NOT NULL",
        P,
    )
    assert {r["device_id"] for r in writers} == {"p-device"}
    assert await db.fetchval("SELECT count(*) FROM changes WHERE patient_id = $1", Q) == 0
    assert await db.fetchval("SELECT sync_version FROM patients WHERE id = $1", P) > versions_before

    async def audited() -> bool:
        for actor, count in refused.items():
            rows = await db.fetchval(
                "SELECT count(*) FROM access_audit WHERE actor_id = $1 AND outcome = 'denied'",
                subs[actor],
            )
            expected = count + (refused["observer"] if actor == "team, not observing" else 0)
            if actor == "observer":
                expected += refused["team, not observing"]
            if rows != expected:
                return False
        return True

    await eventually(audited, what="an audit row for every refused cell")


ROUTES = [
    ("GET", "/sync/", None),
    ("POST", "/sync/", "sync"),
    ("POST", "/chat/", "chat"),
    ("GET", "/admin/care-team", None),
    ("GET", "/admin/audit", None),
]
REST_MATRIX = {
    "P": {
        "GET /sync/": 200,
        "POST /sync/": 200,
        "POST /chat/": 200,
        "GET /admin/care-team": 403,
        "GET /admin/audit": 403,
    },
    "Q": {
        "GET /sync/": 200,
        "POST /sync/": "200:forbidden",
        "POST /chat/": 403,
        "GET /admin/care-team": 403,
        "GET /admin/audit": 403,
    },
    "clinician": {
        "GET /sync/": 403,
        "POST /sync/": 403,
        "POST /chat/": 403,
        "GET /admin/care-team": 403,
        "GET /admin/audit": 403,
    },
    "admin": {
        "GET /sync/": 403,
        "POST /sync/": 403,
        "POST /chat/": 403,
        "GET /admin/care-team": 200,
        "GET /admin/audit": 200,
    },
    "nobody": dict.fromkeys(
        ["GET /sync/", "POST /sync/", "POST /chat/", "GET /admin/care-team", "GET /admin/audit"],
        401,
    ),
}


@pytest.mark.parametrize("actor", sorted(REST_MATRIX))
async def test_every_rest_route_by_everyone(
    chat_gateway: Gateway, db: asyncpg.Connection, actor: str
) -> None:
    patient, other, clinician = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    thread = uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    tokens = {
        "P": patient_token(patient, "p"),
        "Q": patient_token(other, "q"),
        "clinician": clinician_token(clinician),
        "admin": issue_token(TEST_SECRET, role="admin", sub=uuid.uuid4()),
    }
    headers = {"Authorization": f"Bearer {tokens[actor]}"} if actor in tokens else {}
    p_headers = {"Authorization": f"Bearer {tokens['P']}"}
    bodies = {
        "sync": {
            "client_id": "x",
            "threads": [],
            "messages": [
                {
                    "id": str(uuid.uuid4()),
                    "operation": "insert",
                    "thread_id": str(thread),
                    "content": "hello",
                }
            ],
        },
        "chat": {"thread_id": str(thread), "message": "hello"},
    }
    async with httpx.AsyncClient(base_url=chat_gateway.url) as http:
        made = {"client_id": "p", "threads": [{"id": str(thread), "operation": "insert"}]}
        assert (await http.post("/sync/", json=made, headers=p_headers)).status_code == 200
        before = await db.fetchval("SELECT sync_version FROM patients WHERE id = $1", patient)
        got = {}
        for method, path, body in ROUTES:
            params = {"patient_id": str(patient)} if path.startswith("/admin") else None
            response = await http.request(
                method, path, json=bodies.get(body or ""), params=params, headers=headers
            )
            result: int | str = response.status_code
            if path == "/sync/" and method == "POST" and response.status_code == 200:
                rejected = response.json()["rejected"]
                result = f"200:{rejected[0]['code']}" if rejected else 200
            got[f"{method} {path}"] = result
    assert got == REST_MATRIX[actor]
    after = await db.fetchval("SELECT sync_version FROM patients WHERE id = $1", patient)
    # P: a message, then a chat message and its reply; nobody else writes anything of P's.
    assert after == before + (3 if actor == "P" else 0)
    denied = sum(1 for v in got.values() if v == 403 or v == "200:forbidden")
    if actor in tokens and denied:
        sub = patient if actor == "P" else other if actor == "Q" else None

        async def audited() -> bool:
            query = "SELECT count(*) FROM access_audit WHERE outcome = 'denied' AND reason = 'http'"
            if sub is not None:
                rows = await db.fetchval(query + " AND actor_id = $1", sub)
            else:
                rows = await db.fetchval(query + " AND actor_role = $1", actor)
            return bool(rows == denied)

        await eventually(audited, what=f"{denied} refused requests of {actor} audited")


async def test_admin_tokens_cannot_open_a_socket(gateway: Gateway) -> None:
    token = issue_token(TEST_SECRET, role="admin", sub=uuid.uuid4())
    async with open_socket(gateway.ws_url, token) as ws:
        assert (await recv(ws))["error"]["code"] == "forbidden"
        assert await expect_close(ws) == 4403
