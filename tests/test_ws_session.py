"""The WebSocket session under real uvicorn with real clients: auth, frames, limits."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import jwt
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from gateway.auth import AUDIENCE, DEV_PATIENT_ID, issue_token
from protocol.codec import encode_audio_frame
from tests.support import (
    TEST_SECRET,
    TIMEOUT_S,
    Gateway,
    eventually,
    sample,
)
from tests.wsclient import (
    clinician_token,
    expect_close,
    open_socket,
    patient_token,
    recv,
    send,
    session,
)


def settings_for(**overrides: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("gateway", [overrides], indirect=True)


async def test_session_ready_after_header_auth(gateway: Gateway) -> None:
    patient = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient, "headset-7")) as (ws, ready):
        assert ready["protocol"] == 1
        assert ready["role"] == "patient"
        assert ready["patient_id"] == str(patient)
        assert ready["device_id"] == "headset-7"
        assert ready["sync_version"] == 0
        assert ready["heartbeat_s"] == 20
        assert ready["limits"]["frames_per_s"] == 100 and ready["limits"]["burst"] == 300
        assert ready["limits"]["max_frame_bytes"] == 256 * 1024
        assert ready["providers"] == {
            "chat": "offline",
            "asr": "local:whisper-tiny.en",  # the local-asr extra is installed
            "embeddings": "offline",
        }
        uuid.UUID(ready["session_id"])
        assert ws.subprotocol is None


async def test_session_ready_after_an_auth_frame_with_the_subprotocol(gateway: Gateway) -> None:
    async with open_socket(gateway.ws_url, subprotocols=["painar.v1"]) as ws:
        assert ws.subprotocol == "painar.v1"
        await send(ws, {"type": "auth", "token": clinician_token()})
        ready = await recv(ws)
        assert ready["type"] == "session.ready" and ready["role"] == "clinician"
        assert "patient_id" not in ready and "sync_version" not in ready


def hs256(claims: dict[str, Any], secret: str = TEST_SECRET) -> str:
    sub = str(uuid.uuid4())
    base: dict[str, Any] = {"sub": sub, "patient_id": sub, "role": "patient", "aud": AUDIENCE}
    base["exp"] = int(time.time()) + 60
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


def unsigned() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    sub = str(uuid.uuid4())
    claims = {"sub": sub, "role": "patient", "patient_id": sub, "aud": AUDIENCE}
    body = orjson.dumps({**claims, "exp": int(time.time()) + 60})
    payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    return f"{header}.{payload}."


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: hs256({}, secret="another-secret-that-is-32-characters-long"), "invalid token"),
        (lambda: hs256({"exp": int(time.time()) - 10}), "expired"),
        (lambda: hs256({"aud": "someone-else"}), "audience"),
        (unsigned, "algorithm 'none'"),
        (lambda: "dev-token", "invalid token"),  # DEBUG is false
        (lambda: "not.a.jwt", "invalid token"),
        (lambda: hs256({"role": "nurse"}), "role"),
        (lambda: hs256({"patient_id": "nope"}), "patient_id"),
        (lambda: hs256({"device_id": "head\u0000set"}), "device_id"),
    ],
    ids=[
        "bad-signature",
        "expired",
        "audience",
        "alg-none",
        "dev-token",
        "garbage",
        "role",
        "pid",
        "device-nul",
    ],
)
async def test_refused_tokens_get_an_error_then_4401(
    gateway: Gateway, token: Any, reason: str
) -> None:
    async with open_socket(gateway.ws_url, token()) as ws:
        error = await recv(ws)
        assert error["type"] == "error"
        assert error["error"]["code"] == "unauthenticated"
        assert reason in error["error"]["message"]
        assert await expect_close(ws) == 4401


async def test_an_admin_token_is_forbidden_on_sockets_with_4403(gateway: Gateway) -> None:
    token = issue_token(TEST_SECRET, role="admin", sub=uuid.uuid4())
    async with open_socket(gateway.ws_url, token) as ws:
        error = (await recv(ws))["error"]
        assert error["code"] == "forbidden" and "admin HTTP API" in error["message"]
        assert await expect_close(ws) == 4403


async def test_a_missing_token_is_refused(gateway: Gateway) -> None:
    async with open_socket(gateway.ws_url) as ws:
        await send(ws, {"type": "ping"})
        error = await recv(ws)
        assert error["error"]["code"] == "unauthenticated"
        assert "first frame must be an auth frame" in error["error"]["message"]
        assert await expect_close(ws) == 4401


@settings_for(auth_timeout_s=0.3)
async def test_no_auth_frame_in_time_is_refused(gateway: Gateway) -> None:
    async with open_socket(gateway.ws_url) as ws:
        error = await recv(ws)
        assert error["error"]["code"] == "unauthenticated"
        assert "time allowed" in error["error"]["message"]
        assert await expect_close(ws) == 4401


@settings_for(debug=True)
async def test_the_dev_token_is_a_fixed_patient_when_debugging(gateway: Gateway) -> None:
    async with session(gateway.ws_url, "dev-token") as (_, ready):
        assert ready["patient_id"] == str(DEV_PATIENT_ID)


async def test_ping_gets_pong_with_its_timestamp(gateway: Gateway) -> None:
    async with session(gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, {"type": "ping", "ts": 1732572000123})
        assert await recv(ws) == {"type": "pong", "ts": 1732572000123}
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "code", "message", "ref"),
    [
        ("{not json", "bad_frame", "not valid JSON", None),
        ("[1, 2]", "bad_frame", "not a JSON object", None),
        ('{"id": "f1"}', "invalid", "type:", "f1"),
        ('{"type": "teleport", "id": "f2"}', "unknown_type", "teleport", "f2"),
        ('{"type": "ping", "colour": "red"}', "invalid", "colour:", None),
        (
            '{"type": "chat.send", "id": "f3", "thread_id": "nope", "text": "hi"}',
            "invalid",
            "thread_id:",
            "f3",
        ),
        ('{"type": "sync.pull", "id": "f4", "since": -1}', "invalid", "since:", "f4"),
        ('{"type": "sync.pull", "id": "f9", "since": true}', "invalid", "since:", "f9"),
        ('{"type": "sync.pull", "id": "f10", "since": "1"}', "invalid", "since:", "f10"),
        ('{"type": "ping", "ts": true}', "invalid", "ts:", None),
        (f'{{"type": "sync.pull", "id": "f8", "since": {2**63}}}', "invalid", "since:", "f8"),
        (
            '{"type": "chat.send", "id": "f7", "thread_id": "'
            + str(uuid.UUID(int=7))
            + '", "text": "knee\\u0000pain"}',
            "invalid",
            "text: must not contain NUL",
            "f7",
        ),
        (b"\x00\x01", "bad_frame", "20-byte header", None),
        ('{"type": "auth", "token": "x"}', "unauthenticated", "invalid token", None),
        (
            '{"type": "observe", "id": "f5", "patient_id": "' + str(uuid.UUID(int=5)) + '"}',
            "forbidden",
            "observe",
            "f5",
        ),
        (
            '{"type": "audio.commit", "id": "f6", "stream_id": "' + str(uuid.UUID(int=6)) + '"}',
            "not_found",
            "stream_id: no open audio stream",
            "f6",
        ),
    ],
)
async def test_bad_input_gets_an_error_naming_it_and_the_socket_stays_usable(
    gateway: Gateway, frame: str | bytes, code: str, message: str, ref: str | None
) -> None:
    async with session(gateway.ws_url, patient_token()) as (ws, _):
        await ws.send(frame)
        error = (await recv(ws))["error"]
        assert error["code"] == code
        assert message in error["message"]
        assert error.get("ref") == ref
        await send(ws, {"type": "ping", "ts": 1})
        assert await recv(ws) == {"type": "pong", "ts": 1}


async def test_patient_frames_are_forbidden_to_clinicians(gateway: Gateway) -> None:
    async with session(gateway.ws_url, clinician_token()) as (ws, _):
        await send(
            ws, {"type": "chat.send", "id": "c1", "thread_id": str(uuid.uuid4()), "text": "hi"}
        )
        error = (await recv(ws))["error"]
        assert (error["code"], error["ref"]) == ("forbidden", "c1")
        stream = uuid.uuid4()
        await ws.send(encode_audio_frame(stream, 0, b"\x00\x00"))
        assert (await recv(ws))["error"]["code"] == "forbidden"


async def test_a_text_frame_that_is_not_utf8_closes_with_1007_without_an_error_log(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_socket(gateway.ws_url, patient_token()) as ws:
        await recv(ws)  # session.ready
        await ws.send(b"\xff\xfe not text", text=True)
        assert await expect_close(ws) == 1007  # logged before the close went out
    [record] = [r for r in caplog.records if "UTF-8" in r.getMessage()]
    assert record.levelname == "INFO" and record.exc_info is None


async def test_ten_bad_frames_in_a_row_close_with_1008(gateway: Gateway) -> None:
    async with session(gateway.ws_url, patient_token()) as (ws, _):
        for _ in range(9):
            await ws.send("nonsense")
            assert (await recv(ws))["error"]["code"] == "bad_frame"
        await send(ws, {"type": "ping"})  # a good frame resets the count
        assert (await recv(ws))["type"] == "pong"
        for _ in range(10):
            await ws.send("nonsense")
        assert await expect_close(ws) == 1008


async def test_frames_that_decode_but_fail_their_schema_count_towards_1008_too(
    gateway: Gateway,
) -> None:
    not_frames = [
        ("nonsense", "bad_frame"),
        ('{"type": "chat.sing", "id": "x"}', "unknown_type"),
        ('{"type": "ping", "ts": "soon"}', "invalid"),
    ]
    async with session(gateway.ws_url, patient_token()) as (ws, _):
        for n in range(9):
            text, code = not_frames[n % 3]
            await ws.send(text)
            assert (await recv(ws))["error"]["code"] == code
        await ws.send(not_frames[0][0])
        assert await expect_close(ws) == 1008


@settings_for(max_frame_bytes=2048)
async def test_an_oversize_frame_closes_with_1009(gateway: Gateway) -> None:
    async with session(gateway.ws_url, patient_token()) as (ws, ready):
        assert ready["limits"]["max_frame_bytes"] == 2048
        await send(ws, {"type": "ping", "ts": 1})
        assert (await recv(ws))["type"] == "pong"
        await ws.send("x" * 4096)
        assert await expect_close(ws) == 1009


@settings_for(frames_per_s=0.5, burst=5)
async def test_the_rate_limit_answers_rate_limited_then_closes_with_1008(
    gateway: Gateway,
) -> None:
    async with session(gateway.ws_url, patient_token()) as (ws, _):
        for i in range(5):
            await send(ws, {"type": "ping", "ts": i})
        for i in range(5):
            assert await recv(ws) == {"type": "pong", "ts": i}
        await send(ws, {"type": "ping"})
        error = (await recv(ws))["error"]
        assert error["code"] == "rate_limited" and error["retryable"] is True
        for _ in range(50):  # 51 refusals without a pause: not backing off
            await send(ws, {"type": "ping"})
        assert await expect_close(ws) == 1008


@settings_for(patient_frames_per_s=1, patient_burst=25)
async def test_a_patients_sockets_share_one_frame_budget_and_writes_cost_more(
    gateway: Gateway,
) -> None:
    patient = uuid.uuid4()
    async with (
        session(gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
        session(gateway.ws_url, patient_token(patient, "tablet")) as (tablet, _),
        session(gateway.ws_url, patient_token()) as (someone_else, _),
    ):
        thread = {"mutation_id": "m", "entity": "thread", "op": "upsert", "data": {"title": "t"}}
        push = {"type": "sync.push", "id": "p1", "mutations": [{**thread, "id": str(patient)}]}
        await send(phone, push)  # a write: 10 of the 25
        while (frame := await recv(phone))["type"] == "sync.delta":
            pass
        assert frame["type"] == "sync.ack"
        for i in range(14):  # 14 pings: 24 used
            await send(tablet, {"type": "ping", "ts": i})
            assert (await recv(tablet, skip=("presence", "sync.delta")))["type"] == "pong"
        await send(phone, {**push, "id": "p2"})  # needs 10, 1 left: refused
        error = (await recv(phone, skip=("presence", "sync.delta")))["error"]
        assert error["code"] == "rate_limited" and "this patient's sockets" in error["message"]
        assert error["ref"] == "p2"  # read before it was refused: the client knows which
        await send(someone_else, {**push, "mutations": [{**thread, "id": str(uuid.uuid4())}]})
        while (frame := await recv(someone_else))["type"] == "sync.delta":
            pass  # another patient has a budget of their own
        assert frame["type"] == "sync.ack"


@settings_for(allowed_origins=["https://app.painar.example"])
async def test_origins_outside_allowed_origins_are_refused(gateway: Gateway) -> None:
    token = patient_token()
    with pytest.raises(InvalidStatus) as refused:
        async with open_socket(gateway.ws_url, token, origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    async with session(gateway.ws_url, token, origin="https://app.painar.example") as (_, r):
        assert r["type"] == "session.ready"
    async with session(gateway.ws_url, token) as (_, r):  # headsets send no Origin
        assert r["type"] == "session.ready"


async def test_the_open_socket_gauge_counts_by_role(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT_S) as http:

        async def open_patients(n: int) -> bool:
            text = (await http.get("/metrics")).text
            return sample(text, "websocket_connections_open", role="patient") == n

        async with session(gateway.ws_url, patient_token()):
            assert await open_patients(1)
        await eventually(lambda: open_patients(0), what="the gauge to drop")


async def test_a_session_that_cannot_reach_its_database_is_told_and_closed_with_1013(
    gateway: Gateway, database_url: str, postgres_dsn: str
) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        async with open_socket(gateway.ws_url, patient_token()) as ws:
            error = (await recv(ws))["error"]
            assert (error["code"], error["retryable"]) == ("unavailable", True)
            assert "database is unreachable" in error["message"]
            assert await expect_close(ws) == 1013
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


def token_until(exp: float, patient: uuid.UUID, **claims: Any) -> str:
    base = {"sub": str(patient), "patient_id": str(patient), "role": "patient"}
    return hs256({**base, "exp": int(exp), "iat": int(time.time()), **claims})


async def test_a_socket_closes_within_a_second_of_its_tokens_expiry(gateway: Gateway) -> None:
    exp = int(time.time()) + 2
    async with open_socket(gateway.ws_url, token_until(exp, uuid.uuid4())) as ws:
        assert (await recv(ws))["type"] == "session.ready"
        error = (await recv(ws, timeout=5))["error"]
        assert error["code"] == "unauthenticated" and "fresh auth frame" in error["message"]
        assert await expect_close(ws) == 4401
        assert time.time() - exp < 1.0


async def test_a_fresh_auth_frame_keeps_the_socket_open_past_the_old_expiry(
    gateway: Gateway,
) -> None:
    patient = uuid.uuid4()
    exp = int(time.time()) + 2
    async with open_socket(gateway.ws_url, token_until(exp, patient)) as ws:
        assert (await recv(ws))["type"] == "session.ready"
        other = token_until(time.time() + 60, uuid.uuid4())
        await send(ws, {"type": "auth", "id": "r0", "token": other})
        error = (await recv(ws))["error"]
        assert (error["code"], error["ref"]) == ("forbidden", "r0")  # another holder's
        await send(
            ws, {"type": "auth", "id": "r1", "token": token_until(time.time() + 60, patient)}
        )
        assert await recv(ws) == {"type": "ack", "ref": "r1"}
        await asyncio.sleep(max(0.0, exp + 0.5 - time.time()))  # past the old expiry
        await send(ws, {"type": "ping", "ts": 3})
        assert await recv(ws) == {"type": "pong", "ts": 3}


@pytest.mark.parametrize(
    ("gateway", "claims", "reason"),
    [
        ({}, {"iat": int(time.time()), "exp": int(time.time()) + 86400 * 30}, "lifetime"),
        ({"jwt_issuer": "https://id.example"}, {}, "invalid token"),  # no iss
        ({"jwt_issuer": "https://id.example"}, {"iss": "https://evil.example"}, "issuer"),
    ],
    indirect=["gateway"],
    ids=["30-day-token", "no-issuer", "wrong-issuer"],
)
async def test_long_lived_tokens_and_foreign_issuers_are_refused(
    gateway: Gateway, claims: dict[str, Any], reason: str
) -> None:
    async with open_socket(gateway.ws_url, hs256(claims)) as ws:
        error = (await recv(ws))["error"]
        assert error["code"] == "unauthenticated" and reason in error["message"]
        assert await expect_close(ws) == 4401


@pytest.mark.parametrize("gateway", [{"jwt_issuer": "https://id.example"}], indirect=True)
async def test_a_token_from_the_trusted_issuer_is_accepted(gateway: Gateway) -> None:
    async with open_socket(gateway.ws_url, hs256({"iss": "https://id.example"})) as ws:
        assert (await recv(ws))["type"] == "session.ready"


@settings_for(db_pool_min=1, db_pool_max=1, db_acquire_timeout_s=0.2)
async def test_a_connect_the_database_cannot_serve_in_time_is_told_to_come_back(
    gateway: Gateway,
) -> None:
    # The pool's only connection is taken: session.ready cannot read the sync version.
    async with gateway.services.db.acquire():
        async with open_socket(gateway.ws_url, patient_token()) as ws:
            error = (await recv(ws))["error"]
            assert error["code"] == "busy" and error["retryable"] is True
            assert error["message"] == "the database is busy; reconnect shortly"
            assert await expect_close(ws) == 1013
    async with session(gateway.ws_url, patient_token()) as (_, ready):  # and then it can
        assert ready["type"] == "session.ready"
