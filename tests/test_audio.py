"""Voice with real speech: synthesised with espeak-ng, streamed in 20-100 ms pieces over
binary and base64 frames, transcribed by the local Whisper (faster-whisper, tiny.en) and
answered like typed text, seen on a second device of the patient."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from protocol.codec import encode_audio_frame
from tests.chatkit import Upstream, until
from tests.speech import BYTES_PER_MS, SCRIPTS, chunks, encoded, silence, word_error_rate
from tests.support import Gateway, make_settings, serve_gateway
from tests.wsclient import patient_token, recv, send, session


@pytest.fixture
async def voice_gateway(
    database_url: str, upstream: Upstream, request: pytest.FixtureRequest
) -> AsyncIterator[Gateway]:
    overrides: dict[str, Any] = {
        "openai_base_url": upstream.url,  # the model and embeddings: the local stand-in
        "transcription_provider": "local",
        "chat_retry_backoff_s": 0.01,
        **getattr(request, "param", {}),
    }
    async with serve_gateway(make_settings(**overrides), database_url) as running:
        yield running


def start(
    stream: uuid.UUID, thread: uuid.UUID, audio_format: str = "pcm16", **extra: Any
) -> dict[str, Any]:
    frame = {
        "type": "audio.start",
        "id": "s1",
        "stream_id": str(stream),
        "thread_id": str(thread),
        "format": audio_format,
        **extra,
    }
    if audio_format == "pcm16":
        frame.setdefault("sample_rate", 16000)
    return frame


async def stream_audio(
    ws: ClientConnection,
    stream: uuid.UUID,
    data: bytes,
    *,
    chunk_bytes: int = 40 * BYTES_PER_MS,
    binary: bool = True,
    pace_s: float = 0.0,
    first_seq: int = 0,
) -> int:
    """Send `data` as audio.append chunks; returns the next seq."""
    seq = first_seq
    for piece in chunks(data, chunk_bytes):
        if binary:
            await ws.send(encode_audio_frame(stream, seq, piece))
        else:
            audio = base64.b64encode(piece).decode()
            await send(
                ws, {"type": "audio.append", "stream_id": str(stream), "seq": seq, "audio": audio}
            )
        seq += 1
        if pace_s:
            await asyncio.sleep(pace_s)
    return seq


async def frame_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    _, frame = await until(ws, kind)
    return frame


@pytest.mark.parametrize(
    ("audio_format", "binary", "chunk_ms"),
    [("pcm16", True, 40), ("wav", False, 100), ("ogg", True, 20), ("webm", True, 60)],
)
async def test_real_speech_is_transcribed_and_answered_on_every_device(
    voice_gateway: Gateway,
    speech: dict[str, bytes],
    audio_format: str,
    binary: bool,
    chunk_ms: int,
) -> None:
    patient, thread, stream = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    data = encoded(speech["back"], audio_format)
    # Containers are cut by bytes at about the same rate as their audio.
    share = len(data) * chunk_ms * BYTES_PER_MS // len(speech["back"])
    async with (
        session(voice_gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
        session(voice_gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
    ):
        await send(headset, start(stream, thread, audio_format))
        assert await recv(headset) == {"type": "ack", "ref": "s1"}
        await stream_audio(headset, stream, data, chunk_bytes=max(1, share), binary=binary)
        await send(headset, {"type": "audio.commit", "id": "c1", "stream_id": str(stream)})
        assert await frame_of(headset, "ack") == {"type": "ack", "ref": "c1"}
        for device in (headset, phone):
            transcript = await frame_of(device, "audio.transcript")
            assert transcript["stream_id"] == str(stream) and transcript["utterance"] == 0
            assert word_error_rate(SCRIPTS["back"], transcript["text"]) <= 0.25, transcript
        message = await frame_of(phone, "chat.message")
        assert message["message"]["source"] == "voice"
        assert message["message"]["content"] == transcript["text"]
        done = await frame_of(phone, "chat.done")
        assert done["finish_reason"] == "stop"


async def test_audio_that_is_not_its_format_is_invalid_after_the_commit(
    voice_gateway: Gateway,
) -> None:
    stream = uuid.uuid4()
    async with session(voice_gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, start(stream, uuid.uuid4(), "webm"))
        await recv(ws)
        await stream_audio(ws, stream, b"this is not a webm file" * 40, chunk_bytes=300)
        await send(ws, {"type": "audio.commit", "id": "c1", "stream_id": str(stream)})
        assert await frame_of(ws, "ack") == {"type": "ack", "ref": "c1"}
        error = await errors_after(ws)
        assert (error["code"], error["message"], error["ref"]) == (
            "invalid",
            "audio: could not be decoded as webm",
            "c1",
        )


async def test_server_vad_finds_two_utterances_without_a_commit(
    voice_gateway: Gateway, speech: dict[str, bytes]
) -> None:
    patient, thread, stream = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    audio = silence(300) + speech["sleep"] + silence(1000) + speech["back"] + silence(900)
    async with (
        session(voice_gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
        session(voice_gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
    ):
        await send(headset, start(stream, thread, turn_detection="server_vad"))
        assert await recv(headset) == {"type": "ack", "ref": "s1"}
        # In real time, as a microphone would send it.
        await stream_audio(headset, stream, audio, chunk_bytes=40 * BYTES_PER_MS, pace_s=0.04)
        seen: dict[str, list[dict[str, Any]]] = {}
        async with asyncio.timeout(30):
            while len(seen.get("chat.done", [])) < 2:
                frame = await recv(phone)
                seen.setdefault(frame["type"], []).append(frame)
            for _ in range(2):  # the speaking device gets them too (and is read to the end)
                await frame_of(headset, "chat.done")
    started, stopped = seen["audio.speech_started"], seen["audio.speech_stopped"]
    assert [f["utterance"] for f in started] == [0, 1] == [f["utterance"] for f in stopped]
    assert started[0]["audio_start_ms"] < stopped[0]["audio_end_ms"] < started[1]["audio_start_ms"]
    transcripts = seen["audio.transcript"]
    assert [t["utterance"] for t in transcripts] == [0, 1]
    assert word_error_rate(SCRIPTS["sleep"], transcripts[0]["text"]) <= 0.25
    assert word_error_rate(SCRIPTS["back"], transcripts[1]["text"]) <= 0.25
    assert [m["message"]["source"] for m in seen["chat.message"]] == ["voice", "voice"]


@pytest.mark.parametrize(
    "voice_gateway",
    [{"transcription_provider": "openai", "transcription_model": "whisper-1"}],
    indirect=True,
)
async def test_the_openai_compatible_path_uploads_wav_and_answers(
    voice_gateway: Gateway, upstream: Upstream
) -> None:
    patient, thread, stream = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pcm = silence(500)  # what is said does not matter to the stand-in
    async with session(voice_gateway.ws_url, patient_token(patient)) as (ws, ready):
        assert ready["providers"]["asr"] == "openai:whisper-1"
        await send(ws, start(stream, thread, language="en-GB"))
        await recv(ws)
        next_seq = await stream_audio(ws, stream, pcm[:3200])
        await ws.send(encode_audio_frame(stream, 0, pcm[:1280]))  # a duplicate: ignored
        await stream_audio(ws, stream, pcm[3200:], first_seq=next_seq)
        upstream.behaviour.fail_with = [503]  # the first upload fails: it is retried
        await send(ws, {"type": "audio.commit", "id": "c1", "stream_id": str(stream)})
        transcript = await frame_of(ws, "audio.transcript")
        assert transcript["text"] == upstream.behaviour.transcript
        assert transcript["language"] == "en-GB" and transcript["duration_ms"] == 500
        assert (await frame_of(ws, "chat.done"))["finish_reason"] == "stop"
    failed, upload = upstream.behaviour.uploads
    assert failed["size"] == upload["size"]
    assert upload["model"] == "whisper-1" and upload["language"] == "en"
    assert (upload["filename"], upload["content_type"]) == ("audio.wav", "audio/wav")
    assert upload["size"] == 44 + len(pcm)  # a WAV header, then every chunk once
    assert "sciatica" in str(upload["prompt"])


@pytest.mark.parametrize("voice_gateway", [{"transcription_provider": "openai"}], indirect=True)
async def test_an_empty_transcript_is_reported_and_not_sent_to_the_model(
    voice_gateway: Gateway, upstream: Upstream
) -> None:
    upstream.behaviour.transcript = ""
    stream = uuid.uuid4()
    async with session(voice_gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, start(stream, uuid.uuid4()))
        await recv(ws)
        await stream_audio(ws, stream, silence(200))
        await send(ws, {"type": "audio.commit", "id": "c1", "stream_id": str(stream)})
        assert (await frame_of(ws, "audio.transcript"))["text"] == ""
        await send(ws, {"type": "ping", "ts": 1})
        assert await recv(ws) == {"type": "pong", "ts": 1}  # no chat.message came first
    assert upstream.behaviour.chat_requests == []


async def errors_after(ws: ClientConnection) -> dict[str, Any]:
    error: dict[str, Any] = (await frame_of(ws, "error"))["error"]
    return error


@pytest.mark.parametrize("voice_gateway", [{"transcription_provider": "openai"}], indirect=True)
async def test_stream_errors_name_the_problem_and_the_socket_stays_usable(
    voice_gateway: Gateway,
) -> None:
    stream, other = uuid.uuid4(), uuid.uuid4()
    async with session(voice_gateway.ws_url, patient_token()) as (ws, _):
        # An unknown stream, for append and commit.
        await ws.send(encode_audio_frame(other, 0, b"\x00\x00"))
        error = await errors_after(ws)
        assert (error["code"], error.get("ref")) == ("not_found", None)
        await send(ws, {"type": "audio.commit", "id": "c0", "stream_id": str(other)})
        error = await errors_after(ws)
        assert (error["code"], error["ref"]) == ("not_found", "c0")
        # A commit of a stream with no audio.
        await send(ws, start(stream, uuid.uuid4()))
        await recv(ws)
        await send(ws, {"type": "audio.commit", "id": "c1", "stream_id": str(stream)})
        error = await errors_after(ws)
        assert (error["code"], error["message"]) == ("invalid", "audio: the stream holds no audio")
        # A gap: chunk 1 never came.
        await ws.send(encode_audio_frame(stream, 0, silence(20)))
        await ws.send(encode_audio_frame(stream, 2, silence(20)))
        await send(ws, {"type": "audio.commit", "id": "c2", "stream_id": str(stream)})
        error = await errors_after(ws)
        assert (error["code"], error["message"], error["ref"]) == (
            "invalid",
            "seq: chunk 1 is missing",
            "c2",
        )
        # The same stream id twice; then cancel, after which the stream is unknown.
        await send(ws, start(stream, uuid.uuid4()))
        assert (await errors_after(ws))["code"] == "conflict"
        await send(ws, {"type": "audio.cancel", "stream_id": str(stream)})
        await send(ws, {"type": "audio.commit", "id": "c3", "stream_id": str(stream)})
        assert (await errors_after(ws))["code"] == "not_found"
        # Bad base64, a short binary header, bad start frames.
        await send(ws, {"type": "audio.append", "stream_id": str(stream), "seq": 0, "audio": "%%"})
        assert (await errors_after(ws))["message"] == "audio: must be valid base64"
        await ws.send(b"\x00" * 19)
        assert (await errors_after(ws))["code"] == "bad_frame"
        await send(ws, {**start(stream, uuid.uuid4()), "sample_rate": None})
        assert (await errors_after(ws))["message"] == "sample_rate: required for pcm16"
        await send(ws, start(stream, uuid.uuid4(), "wav", turn_detection="server_vad"))
        assert (await errors_after(ws))[
            "message"
        ] == "turn_detection: server_vad needs format pcm16"
        await send(ws, {"type": "ping", "ts": 1})
        assert await recv(ws) == {"type": "pong", "ts": 1}


@pytest.mark.parametrize(
    "voice_gateway",
    [{"transcription_provider": "openai", "max_audio_bytes": 4096, "max_audio_seconds": 0.1}],
    indirect=True,
)
async def test_streams_past_their_size_or_length_end_with_too_large(voice_gateway: Gateway) -> None:
    big, long = uuid.uuid4(), uuid.uuid4()
    async with session(voice_gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, start(big, uuid.uuid4(), "wav"))
        await recv(ws)
        await stream_audio(ws, big, b"\x01" * 5000, chunk_bytes=1000)
        error = await errors_after(ws)
        assert error["code"] == "too_large" and "max_audio_bytes (4096)" in error["message"]
        await send(ws, start(long, uuid.uuid4()))
        await recv(ws)
        await stream_audio(ws, long, silence(120), chunk_bytes=40 * BYTES_PER_MS)
        error = await errors_after(ws)
        assert error["code"] == "too_large" and "0.1 s of audio" in error["message"]
        for ended in (big, long):
            await send(ws, {"type": "audio.commit", "id": "c", "stream_id": str(ended)})
            assert (await errors_after(ws))["code"] == "not_found"


@pytest.mark.parametrize(
    "voice_gateway",
    [{"transcription_provider": "openai", "audio_idle_timeout_s": 0.3}],
    indirect=True,
)
async def test_a_stream_left_idle_ends_with_an_error(voice_gateway: Gateway) -> None:
    stream = uuid.uuid4()
    async with session(voice_gateway.ws_url, patient_token()) as (ws, _):
        await send(ws, start(stream, uuid.uuid4()))
        await recv(ws)
        await stream_audio(ws, stream, silence(40))
        error = await errors_after(ws)
        assert error["code"] == "invalid" and "no audio for 0.3 s" in error["message"]


@pytest.mark.parametrize(
    "voice_gateway",
    [{"transcription_provider": "openai", "audio_spool_bytes": 1024}],
    indirect=True,
)
async def test_spooled_audio_is_gone_after_commit_cancel_and_a_closed_socket(
    voice_gateway: Gateway,
) -> None:
    spool = voice_gateway.services.spool_dir

    def files() -> list[Path]:
        return sorted(spool.iterdir())

    for ending in ("commit", "cancel", "close"):
        stream = uuid.uuid4()
        async with session(voice_gateway.ws_url, patient_token()) as (ws, _):
            await send(ws, start(stream, uuid.uuid4()))
            await recv(ws)
            await stream_audio(ws, stream, silence(200))
            await send(ws, {"type": "ping", "ts": 1})
            await frame_of(ws, "pong")  # every chunk before it was taken
            [spooled] = files()
            assert spooled.stat().st_mode & 0o777 == 0o600
            if ending == "commit":
                await send(ws, {"type": "audio.commit", "id": "c", "stream_id": str(stream)})
                await frame_of(ws, "audio.transcript")
            elif ending == "cancel":
                await send(ws, {"type": "audio.cancel", "stream_id": str(stream)})
                await send(ws, {"type": "ping", "ts": 2})
                await frame_of(ws, "pong")
        # "close": the socket went away with the stream open.
        async with asyncio.timeout(5):
            while files():
                await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "voice_gateway",
    [{"transcription_provider": "openai", "transcription_concurrency": 1}],
    indirect=True,
)
async def test_past_the_transcription_limit_a_commit_is_busy(
    voice_gateway: Gateway, upstream: Upstream
) -> None:
    upstream.behaviour.transcription_delay_s = 1.0
    first, second = uuid.uuid4(), uuid.uuid4()
    async with session(voice_gateway.ws_url, patient_token()) as (ws, _):
        for stream in (first, second):
            await send(ws, {**start(stream, uuid.uuid4()), "respond": False})
            await recv(ws)
            await stream_audio(ws, stream, silence(100))
        await send(ws, {"type": "audio.commit", "id": "c1", "stream_id": str(first)})
        assert await frame_of(ws, "ack") == {"type": "ack", "ref": "c1"}
        await send(ws, {"type": "audio.commit", "id": "c2", "stream_id": str(second)})
        error = await errors_after(ws)
        assert (error["code"], error["ref"], error["retryable"]) == ("busy", "c2", True)
        await frame_of(ws, "audio.transcript")  # the first one's
        await send(ws, {"type": "audio.commit", "id": "c3", "stream_id": str(second)})
        assert await frame_of(ws, "ack") == {"type": "ack", "ref": "c3"}  # the stream stayed


@pytest.mark.parametrize("voice_gateway", [{"transcription_provider": "none"}], indirect=True)
async def test_without_a_transcriber_audio_start_says_how_to_enable_it(
    voice_gateway: Gateway,
) -> None:
    async with session(voice_gateway.ws_url, patient_token()) as (ws, ready):
        assert ready["providers"]["asr"] == "none"
        await send(ws, start(uuid.uuid4(), uuid.uuid4()))
        error = (await recv(ws))["error"]
        assert error["code"] == "unavailable" and "local-asr" in error["message"]


async def test_shutdown_deletes_the_audio_of_streams_still_open(
    database_url: str, upstream: Upstream
) -> None:
    settings = make_settings(
        openai_base_url=upstream.url, transcription_provider="openai", audio_spool_bytes=1024
    )
    async with serve_gateway(settings, database_url) as gateway:
        spool = gateway.services.spool_dir
        stream = uuid.uuid4()
        async with session(gateway.ws_url, patient_token()) as (ws, _):
            await send(ws, start(stream, uuid.uuid4()))
            await recv(ws)
            await stream_audio(ws, stream, silence(200))
            await send(ws, {"type": "ping", "ts": 1})
            await frame_of(ws, "pong")
            assert len(list(spool.iterdir())) == 1
            gateway.server.should_exit = True  # shut down with the socket and stream open
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(ws)
    assert not spool.exists()
