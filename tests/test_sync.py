"""Sync over the socket and the original REST routes, in one gateway process."""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from gateway.auth import issue_token
from tests.support import TEST_SECRET, TIMEOUT_S, Gateway
from tests.wsclient import clinician_token, patient_token, recv, send, session


def thread(mutation_id: str, thread_id: uuid.UUID, title: str = "Back pain") -> dict[str, Any]:
    return {
        "mutation_id": mutation_id,
        "entity": "thread",
        "op": "upsert",
        "id": str(thread_id),
        "data": {"title": title},
    }


def message(
    mutation_id: str, thread_id: uuid.UUID, text: str = "It hurts", **data: Any
) -> dict[str, Any]:
    return {
        "mutation_id": mutation_id,
        "entity": "message",
        "op": "upsert",
        "id": str(data.pop("id", uuid.uuid4())),
        "data": {"thread_id": str(thread_id), "role": "user", "content": text, **data},
    }


# Deltas that arrived while a test waited for something else, per socket, in order.
held: dict[int, list[dict[str, Any]]] = {}


async def answer(ws: Any) -> dict[str, Any]:
    """The next frame that is not a delta or presence (deltas are held for next_delta)."""
    while True:
        frame = await recv(ws)
        if frame["type"] != "sync.delta":
            return frame
        held.setdefault(id(ws), []).append(frame)


async def push(ws: Any, frame_id: str, *mutations: Any) -> dict[str, Any]:
    """Push; the answer. The push's own sync.delta, which follows its ack, is held for
    next_delta."""
    await send(ws, {"type": "sync.push", "id": frame_id, "mutations": list(mutations)})
    reply = await answer(ws)
    if reply["type"] == "sync.ack" and reply["applied"]:
        while True:
            delta = await recv(ws)
            assert delta["type"] == "sync.delta", delta
            held.setdefault(id(ws), []).append(delta)
            if delta["version"] >= reply["version"]:
                break
    return reply


async def next_delta(ws: Any) -> dict[str, Any]:
    waiting = held.get(id(ws))
    if waiting:
        return waiting.pop(0)
    return await recv(ws, skip=("presence", "sync.ack"))


async def test_a_push_is_acked_and_every_device_gets_the_delta(gateway: Gateway) -> None:
    patient = uuid.uuid4()
    t = uuid.uuid4()
    async with (
        session(gateway.ws_url, patient_token(patient, "headset")) as (headset, ready),
        session(gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
    ):
        assert ready["sync_version"] == 0
        ack = await push(headset, "p1", thread("m1", t), message("m2", t, "Knee aches"))
        assert ack == {
            "type": "sync.ack",
            "ref": "p1",
            "version": 2,
            "applied": ["m1", "m2"],
            "duplicates": [],
            "rejected": [],
        }
        for ws in (headset, phone):  # the pushing socket too
            delta = await next_delta(ws)
            assert delta["type"] == "sync.delta" and delta["version"] == 2
            assert [c["version"] for c in delta["changes"]] == [1, 2]
            first, second = delta["changes"]
            assert (first["entity"], first["op"], first["id"]) == ("thread", "upsert", str(t))
            assert first["data"]["title"] == "Back pain"
            assert second["data"]["content"] == "Knee aches"
            assert second["data"]["source"] == "sync"
            assert (second["device_id"], second["mutation_id"]) == ("headset", "m2")


async def test_a_replayed_push_is_a_duplicate_and_a_reused_mutation_id_a_conflict(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient = uuid.uuid4()
    t, m = uuid.uuid4(), uuid.uuid4()
    written = message("m2", t, "Knee aches", id=m, created_at="2026-11-29T10:00:00+02:00")
    async with session(gateway.ws_url, patient_token(patient, "headset")) as (ws, _):
        first = await push(ws, "p1", thread("m1", t, "Original"), written)
        await next_delta(ws)
        before = await db.fetch("SELECT * FROM threads ORDER BY id")
        # The same changes again (the time given in another form, the same instant).
        replay = message("m2", t, "Knee aches", id=m, created_at="2026-11-29T08:00:00Z")
        again = await push(ws, "p2", thread("m1", t, "Original"), replay)
        assert again["duplicates"] == ["m1", "m2"] and again["applied"] == []
        assert again["version"] == first["version"] == 2
        # The same keys for different changes: a client bug, refused by name.
        reused = await push(
            ws,
            "p3",
            thread("m1", t, "Changed on replay"),
            message("m2", t, "Another text", id=m),
            thread("m2", uuid.uuid4()),
        )
        assert reused["applied"] == [] and reused["duplicates"] == []
        assert [(r["mutation_id"], r["code"]) for r in reused["rejected"]] == [
            ("m1", "conflict"),
            ("m2", "conflict"),
            ("m2", "conflict"),
        ]
        assert reused["rejected"][0]["message"].startswith(
            "mutation_id: this device already used it for a different change"
        )
        assert await db.fetch("SELECT * FROM threads ORDER BY id") == before
        assert await db.fetchval("SELECT content FROM messages WHERE id = $1", m) == "Knee aches"
        await send(ws, {"type": "ping", "ts": 1})  # no delta came for either
        assert await recv(ws, skip=("presence",)) == {"type": "pong", "ts": 1}


async def test_the_pushing_socket_gets_its_ack_before_its_delta(gateway: Gateway) -> None:
    patient, t = uuid.uuid4(), uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient, "headset")) as (ws, _):
        for n in range(30):
            await send(ws, {"type": "sync.push", "id": f"p{n}", "mutations": [thread(f"m{n}", t)]})
            first = await recv(ws, skip=("presence",))
            assert first["type"] == "sync.ack" and first["ref"] == f"p{n}", first
            delta = await recv(ws, skip=("presence",))
            assert delta["type"] == "sync.delta" and delta["version"] == first["version"]


async def test_a_change_leaves_unset_fields_out_and_every_time_ends_in_z(
    gateway: Gateway,
) -> None:
    patient, t = uuid.uuid4(), uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient, "headset")) as (ws, _):
        await send(
            ws,
            {
                "type": "sync.push",
                "id": "p",
                "mutations": [
                    thread("m1", t),
                    message("m2", t, created_at="2026-11-29T10:00:00+02:00"),
                ],
            },
        )
        await recv(ws, skip=("presence",))  # the ack
        raw = await ws.recv()
        await send(ws, {"type": "sync.pull", "id": "q", "since": 0})
        pulled = await ws.recv()
    for text in (raw, pulled):
        assert "null" not in str(text) and "+00:00" not in str(text)
    delta = orjson.loads(raw)
    changed = delta["changes"][1]
    assert "svg_path" not in changed["data"]
    times = [changed["at"], changed["data"]["created_at"], changed["data"]["updated_at"]]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", x) for x in times), times
    assert changed["data"]["created_at"] == "2026-11-29T08:00:00Z"


async def test_each_invalid_mutation_is_rejected_alone_and_stores_nothing(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient, other = uuid.uuid4(), uuid.uuid4()
    mine, theirs, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with session(gateway.ws_url, patient_token(other, "x")) as (ws, _):
        await push(ws, "o", thread("o1", theirs))
    async with session(gateway.ws_url, patient_token(patient, "headset")) as (ws, _):
        await push(ws, "setup", thread("s1", mine), thread("s2", gone))
        await push(
            ws, "del", {"mutation_id": "s3", "entity": "thread", "op": "delete", "id": str(gone)}
        )
        before = await db.fetchval("SELECT count(*) FROM changes")
        cases = [
            (
                {"mutation_id": "r1", "entity": "post", "op": "upsert", "id": str(uuid.uuid4())},
                "invalid",
                "entity",
            ),
            (
                {"mutation_id": "r2", "entity": "thread", "op": "merge", "id": str(uuid.uuid4())},
                "invalid",
                "op",
            ),
            (
                {
                    "mutation_id": "r3",
                    "entity": "thread",
                    "op": "upsert",
                    "id": "not-a-uuid",
                    "data": {},
                },
                "invalid",
                "id",
            ),
            (
                {"mutation_id": "r4", "entity": "thread", "op": "upsert", "id": str(uuid.uuid4())},
                "invalid",
                "data: required",
            ),
            ({**thread("r5", uuid.uuid4()), "data": {"title": 5}}, "invalid", "data.title"),
            ({**thread("r6", uuid.uuid4()), "data": {"titel": "typo"}}, "invalid", "data.titel"),
            (
                {**thread("r6n", uuid.uuid4()), "data": {"title": "a\u0000b"}},
                "invalid",
                "data.title: must not contain NUL",
            ),
            (
                {
                    "mutation_id": "r7",
                    "entity": "thread",
                    "op": "delete",
                    "id": str(mine),
                    "data": {},
                },
                "invalid",
                "must be null",
            ),
            (
                {
                    **message("r8", mine),
                    "data": {"thread_id": str(mine), "role": "assistant", "content": "x"},
                },
                "forbidden",
                "role",
            ),
            (message("r9", uuid.uuid4()), "not_found", "thread_id"),
            (
                message("r9t", mine, created_at="2026-01-01T00:00:00+16:00"),
                "invalid",
                "data.created_at: the UTC offset",
            ),
            (
                message("r9y", mine, created_at="9999-12-31T23:59:59-10:00"),
                "invalid",
                "data.created_at: must fall within",
            ),
            (message("r9s", mine, svg_path="<script>"), "invalid", "data.svg_path"),
            (message("r10", theirs), "forbidden", "another patient"),
            (thread("r11", theirs), "forbidden", "another patient"),
            (thread("r12", gone), "conflict", "deleted"),
            (message("r13", gone), "conflict", "deleted"),
            (
                {
                    "mutation_id": "r14",
                    "entity": "message",
                    "op": "delete",
                    "id": str(uuid.uuid4()),
                },
                "not_found",
                "no such message",
            ),
            ("not an object", "invalid", "must be an object"),
        ]
        ack = await push(ws, "bad", *[m for m, _, _ in cases], thread("ok", uuid.uuid4()))
        assert ack["applied"] == ["ok"]
        assert len(ack["rejected"]) == len(cases)
        for rejected, (mutation, code, text) in zip(ack["rejected"], cases, strict=True):
            expected_id = mutation["mutation_id"] if isinstance(mutation, dict) else ""
            assert rejected["mutation_id"] == expected_id
            assert rejected["code"] == code, rejected
            assert text in rejected["message"], rejected
        assert await db.fetchval("SELECT count(*) FROM changes") == before + 1


async def test_pull_pages_through_the_changes(gateway: Gateway) -> None:
    patient = uuid.uuid4()
    t = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient, "headset")) as (ws, _):
        await push(
            ws, "p", thread("m0", t), *[message(f"m{i}", t, f"note {i}") for i in range(1, 5)]
        )
        await send(ws, {"type": "sync.pull", "id": "q1", "since": 0, "limit": 3})
        page = await answer(ws)
        assert page["type"] == "sync.changes" and page["ref"] == "q1"
        assert (page["since"], page["version"], page["has_more"]) == (0, 5, True)
        assert [c["version"] for c in page["changes"]] == [1, 2, 3]
        await send(ws, {"type": "sync.pull", "id": "q2", "since": 3})
        page = await answer(ws)
        assert [c["version"] for c in page["changes"]] == [4, 5] and not page["has_more"]
        await send(
            ws, {"type": "sync.pull", "id": "q3", "since": 0, "patient_id": str(uuid.uuid4())}
        )
        error = (await answer(ws))["error"]
        assert (error["code"], error["ref"]) == ("forbidden", "q3")


async def test_clinicians_may_not_pull_patients_they_do_not_observe(gateway: Gateway) -> None:
    async with session(gateway.ws_url, clinician_token()) as (ws, _):
        await send(
            ws, {"type": "sync.pull", "id": "c", "since": 0, "patient_id": str(uuid.uuid4())}
        )
        error = (await recv(ws))["error"]
        assert (error["code"], error["ref"]) == ("forbidden", "c")
        await send(ws, {"type": "sync.push", "id": "d", "mutations": [thread("m", uuid.uuid4())]})
        assert (await recv(ws))["error"]["code"] == "forbidden"


async def test_session_ready_carries_the_current_version(gateway: Gateway) -> None:
    patient = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient, "a")) as (ws, _):
        await push(ws, "p", thread("m", uuid.uuid4()))
    async with session(gateway.ws_url, patient_token(patient, "b")) as (_, ready):
        assert ready["sync_version"] == 1


@pytest.mark.parametrize("gateway", [{"send_queue_bytes": 64 * 1024}], indirect=True)
async def test_a_page_of_huge_messages_still_pulls(gateway: Gateway) -> None:
    """Twelve messages of 32,000 characters are six send queues' worth: pages are cut by
    bytes (a quarter of the queue, at least one change each), so a device still pulls
    every one instead of being closed as a slow consumer."""
    patient, thread_id = uuid.uuid4(), uuid.uuid4()
    texts = [f"{n:02d}" + "y" * 31_998 for n in range(12)]
    body = {
        "client_id": "phone",
        "threads": [{"id": str(thread_id), "title": "t", "operation": "insert"}],
        "messages": [
            {
                "id": str(uuid.uuid4()),
                "thread_id": str(thread_id),
                "role": "user",
                "content": text,
                "operation": "insert",
            }
            for text in texts
        ],
    }
    headers = {"Authorization": f"Bearer {patient_token(patient, 'phone')}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as http:
        assert (await http.post("/sync/", json=body)).status_code == 200
    received: list[str] = []
    async with session(gateway.ws_url, patient_token(patient, "headset")) as (ws, ready):
        since, pages = 0, 0
        while True:
            await send(ws, {"type": "sync.pull", "id": f"q{pages}", "since": since})
            page = await recv(ws)
            assert page["type"] == "sync.changes", page
            received += [c["data"]["content"] for c in page["changes"] if c["entity"] == "message"]
            since, pages = page["changes"][-1]["version"], pages + 1
            if not page["has_more"]:
                break
        assert since == ready["sync_version"] == 13
    assert received == texts and pages >= 12


# ---- the original REST routes ----------------------------------------------------------


def original_payload(thread_id: uuid.UUID, message_id: uuid.UUID) -> dict[str, Any]:
    return {
        "threads": [{"id": str(thread_id), "title": "Back Pain Discussion", "operation": "insert"}],
        "messages": [
            {
                "id": str(message_id),
                "thread_id": str(thread_id),
                "role": "user",
                "content": "My back hurts",
                "svg_path": "",  # no body-map region, as the original clients said it
                "operation": "insert",
            }
        ],
        "client_id": "mobile-app-v1",
        "sync_timestamp": 1234567890,
    }


async def test_post_sync_takes_the_original_payload_and_a_retry_is_idempotent(
    gateway: Gateway,
) -> None:
    patient = uuid.uuid4()
    headers = {"Authorization": f"Bearer {patient_token(patient, 'phone')}"}
    t, m = uuid.uuid4(), uuid.uuid4()
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S, headers=headers) as http,
        session(gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
    ):
        first = await http.post("/sync/", json=original_payload(t, m))
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["version"] == 2 and len(body["applied"]) == 2
        assert body["duplicates"] == [] and body["rejected"] == []
        delta = await next_delta(headset)  # the REST write reaches the sockets live
        assert [c["id"] for c in delta["changes"]] == [str(t), str(m)]
        assert delta["changes"][1]["data"].get("svg_path") is None

        retry = await http.post("/sync/", json=original_payload(t, m))
        assert retry.json() == {
            "version": 2,
            "applied": [],
            "duplicates": body["applied"],
            "rejected": [],
        }
        update = original_payload(t, m)
        update["messages"][0].update(operation="update", content="Better today")
        update["sync_timestamp"] = 1234567999
        assert (await http.post("/sync/", json=update)).json()["version"] == 4

        pulled = await http.get("/sync/", params={"since": 2, "limit": 1})
        assert pulled.status_code == 200
        assert pulled.json()["version"] == 4 and pulled.json()["has_more"] is True
        assert [c["version"] for c in pulled.json()["changes"]] == [3]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b'{"threads": []}', 422, "client_id"),
        (
            b'{"client_id": "c", "threads": [{"id": "x", "operation": "insert"}]}',
            422,
            "threads.0.id",
        ),
        (
            b'{"client_id": "c", "threads": [{"id": "'
            + str(uuid.UUID(int=1)).encode()
            + b'", "operation": "upsert"}]}',
            422,
            "threads.0.operation",
        ),
        (
            b'{"client_id": "c", "threads": [{"id": "'
            + str(uuid.UUID(int=1)).encode()
            + b'", "operation": "insert", "title": "a\\u0000b"}]}',
            422,
            "threads.0.title",
        ),
        (
            b'{"client_id": "c", "messages": [{"id": "'
            + str(uuid.UUID(int=2)).encode()
            + b'", "operation": "insert", "thread_id": "'
            + str(uuid.UUID(int=1)).encode()
            + b'", "created_at": "2026-01-01T00:00:00-20:00"}]}',
            422,
            "messages.0.created_at",
        ),
    ],
)
async def test_post_sync_refuses_bad_payloads_naming_the_field(
    gateway: Gateway, body: bytes, status: int, field: str
) -> None:
    headers = {"Authorization": f"Bearer {patient_token()}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
        response = await http.post("/sync/", content=body, headers=headers)
        assert response.status_code == status
        assert response.json()["error"]["message"].startswith(field)


async def test_the_sync_routes_need_a_patients_bearer_token(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:
        assert (await http.get("/sync/")).status_code == 401
        bad = await http.get("/sync/", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthenticated"
        clinician = {"Authorization": f"Bearer {clinician_token()}"}
        assert (await http.post("/sync/", json={}, headers=clinician)).status_code == 403
        patient = {"Authorization": f"Bearer {patient_token()}"}
        for since in (-1, 2**63):  # below zero, beyond a bigint
            wrong = await http.get("/sync/", params={"since": since}, headers=patient)
            assert wrong.status_code == 422
            assert wrong.json()["error"]["message"].startswith("since")


async def test_a_rest_body_over_the_limit_is_refused_with_413(gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {patient_token()}"}
    big = {"client_id": "x", "threads": [], "messages": [], "pad": "x" * (2 * 1024 * 1024)}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        refused = await http.post("/sync/", json=big, headers=headers)
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "too_large"

        async def chunked() -> Any:
            for _ in range(3):
                yield b"x" * (512 * 1024)

        streamed = await http.post("/sync/", content=chunked(), headers=headers)
        assert streamed.status_code == 413
        fine = await http.post("/sync/", json={"client_id": "x"}, headers=headers)
        assert fine.status_code == 200


async def test_two_devices_without_a_device_id_never_share_idempotency_keys(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient = uuid.uuid4()
    token = issue_token(TEST_SECRET, role="patient", sub=patient)  # names no device
    first_thread, second_thread = uuid.uuid4(), uuid.uuid4()
    async with (
        session(gateway.ws_url, token) as (phone, phone_ready),
        session(gateway.ws_url, token) as (tablet, tablet_ready),
    ):
        for ready in (phone_ready, tablet_ready):
            assert ready["device_id"].startswith("socket-") and ready["device_id_assigned"]
        assert phone_ready["device_id"] != tablet_ready["device_id"]
        await send(
            phone, {"type": "sync.push", "id": "a", "mutations": [thread("m1", first_thread)]}
        )
        assert (await answer(phone))["applied"] == ["m1"]
        # The same mutation id from the other device is another change, not a duplicate.
        await send(
            tablet, {"type": "sync.push", "id": "b", "mutations": [thread("m1", second_thread)]}
        )
        assert (await answer(tablet))["applied"] == ["m1"]
        fresh = issue_token(TEST_SECRET, role="patient", sub=patient, ttl_s=600)
        await send(phone, {"type": "auth", "id": "r", "token": fresh})  # same holder
        assert await answer(phone) == {"type": "ack", "ref": "r"}
    stored = await db.fetchval(
        "SELECT count(*) FROM threads WHERE id = ANY($1::uuid[])", [first_thread, second_thread]
    )
    assert stored == 2


async def test_rest_posts_without_a_key_always_apply_and_with_one_are_idempotent(
    gateway: Gateway,
) -> None:
    patient, thread_id = uuid.uuid4(), uuid.uuid4()
    headers = {"Authorization": f"Bearer {patient_token(patient, 'phone')}"}

    def titled(title: str) -> dict[str, Any]:
        return {
            "client_id": "app",
            "threads": [{"id": str(thread_id), "operation": "update", "title": title}],
        }

    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as http:
        for title in ("A", "B", "A"):  # A -> B -> A, no timestamps, no key: all apply
            body = (await http.post("/sync/", json=titled(title))).json()
            assert len(body["applied"]) == 1
        pulled = (await http.get("/sync/")).json()
        assert pulled["changes"][-1]["data"]["title"] == "A"
        keyed = {**headers, "Idempotency-Key": "retry-7"}
        first = (await http.post("/sync/", json=titled("C"), headers=keyed)).json()
        again = (await http.post("/sync/", json=titled("C"), headers=keyed)).json()
        assert len(first["applied"]) == 1 and again["duplicates"] == first["applied"]
