"""A whole session — chat, voice, sync, a clinician observing — with every logger at DEBUG:
no message text, transcript, reply or token appears in any log line or metric label."""

from __future__ import annotations

import io
import logging
import uuid

import asyncpg
import httpx
import pytest

from gateway.ops.logs import line_formatter, quiet_libraries
from protocol.codec import encode_audio_frame
from storage.care_team import grant
from tests.chatkit import Upstream, chat_send, until
from tests.support import Gateway
from tests.wsclient import clinician_token, patient_token, recv, send, session


@pytest.mark.parametrize("chat_gateway", [{"transcription_provider": "openai"}], indirect=True)
async def test_no_patient_text_or_token_in_logs_or_metrics(
    chat_gateway: Gateway,
    upstream: Upstream,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_libraries()  # as `painar-gateway serve` sets up logging, with LOG_LEVEL=DEBUG
    caplog.set_level(logging.DEBUG)
    typed, synced = "TYPED-knee-7781 hurts", "SYNCED-back-5523 aches"
    spoken, replied = "SPOKEN-hip-9042 burns", "REPLIED-advice-3307"
    upstream.behaviour.transcript = spoken
    upstream.behaviour.tokens = [replied, " rest."]
    patient, clinician, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await grant(db, clinician, patient, granted_by=uuid.uuid4())
    patient_jwt, clinician_jwt = patient_token(patient), clinician_token(clinician)
    async with (
        session(chat_gateway.ws_url, patient_jwt) as (device, _),
        session(chat_gateway.ws_url, clinician_jwt) as (watcher, _),
    ):
        await send(watcher, {"type": "observe", "id": "o", "patient_id": str(patient)})
        await until(watcher, "observe.snapshot")
        await send(device, chat_send(thread, typed))
        await until(device, "chat.done")
        push = {
            "mutation_id": "s1",
            "entity": "message",
            "op": "upsert",
            "id": str(uuid.uuid4()),
            "data": {"thread_id": str(thread), "role": "user", "content": synced},
        }
        await send(device, {"type": "sync.push", "id": "p", "mutations": [push]})
        await until(device, "sync.ack")
        stream = uuid.uuid4()
        start = {
            "type": "audio.start",
            "id": "a",
            "stream_id": str(stream),
            "thread_id": str(uuid.uuid4()),
            "format": "pcm16",
            "sample_rate": 16000,
        }
        await send(device, start)
        await recv(device)
        await device.send(b"\x00" * 20 + b"\x00\x00" * 1600)  # not a started stream: refused
        upstream.behaviour.fail_with = [500]  # a failure on the way, logged
        await device.send(encode_audio_frame(stream, 0, b"\x00\x00" * 1600))
        await send(device, {"type": "audio.commit", "id": "c", "stream_id": str(stream)})
        transcript = await until(device, "audio.transcript")
        assert transcript[1]["text"] == spoken
        await until(watcher, "chat.done")  # the observer saw the voice message's reply too
        await send(watcher, chat_send(thread, "a clinician trying to write"))
        await until(watcher, "error")
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{chat_gateway.url}/metrics")).text
    secrets = [typed, synced, spoken, replied, patient_jwt, clinician_jwt]
    secrets += [word for text in (typed, synced, spoken, replied) for word in text.split()[:1]]
    # The suite's own clients and stand-in server log in this process too: not the gateway.
    records = [
        r for r in caplog.records if not r.name.startswith(("websockets.client", "uvicorn.access"))
    ]
    lines = [line_formatter().format(record) for record in records]
    lines += [str(record.args) for record in records if record.args]
    lines += [str(record.exc_info[1]) for record in records if record.exc_info]
    assert len(lines) > 3  # the session did log
    for secret in secrets:
        assert not [line for line in lines if secret in line], secret
        assert secret not in metrics, secret


async def test_a_database_errors_row_values_never_reach_a_log_line(db: asyncpg.Connection) -> None:
    """Log lines as `painar-gateway serve` writes them: the exception's type, fingerprint
    and frames, never its text (PostgreSQL quotes the values it refused)."""
    await db.execute("CREATE TEMP TABLE notes (body text PRIMARY KEY)")
    await db.execute("INSERT INTO notes VALUES ('ROW-knee-4410')")
    failures: list[BaseException] = []
    for statement in ("INSERT INTO notes VALUES ('ROW-knee-4410')", "SELECT 'ROW-hip-5521'::int"):
        try:
            await db.execute(statement)
        except asyncpg.PostgresError as exc:
            failures.append(exc)
    assert len(failures) == 2
    assert "ROW-hip-5521" in str(failures[1])  # the text would leak, were it logged
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(line_formatter())
    logger = logging.getLogger("gateway.chat.run")
    logger.addHandler(handler)
    try:
        for failure in failures:
            logger.error("storing a reply failed: %s", type(failure).__name__, exc_info=failure)
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "ROW-" not in text
    assert "asyncpg.exceptions.UniqueViolationError (text withheld) fingerprint=" in text
    assert "InvalidTextRepresentationError (text withheld) fingerprint=" in text
    assert "test_no_patient_data.py" in text  # the frames are kept
