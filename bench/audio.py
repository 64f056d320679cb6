"""Voice: transcription latency and real-time factor by provider, the time from the end of
speech to the first reply delta with `server_vad`, memory per open stream, and 20 sockets
speaking at once with the other sockets' ping, chat and sync latency measured alongside.

One gateway process with Redis and the embedded PostgreSQL; the model and embeddings are
the test suite's stand-in server (tests/fake_openai.py) in a process of its own, replying
at once. Speech is synthesised with espeak-ng (tests/speech.py) and sent as pcm16 16 kHz
in binary frames.

(1) Transcription: 2, 5 and 15 s of speech, REPEATS times each, sent at once (100 ms
    chunks) then committed; latency = commit sent -> audio.transcript received. Providers: `local`
    (faster-whisper, Whisper tiny.en, TRANSCRIPTION_CPU_THREADS=2) and `openai` against
    the stand-in (the gateway's own cost of that path: the upload and the request).
(2) server_vad: UTTERANCES streams, each silence + one sentence + silence, sent in real
    time (40 ms chunks every 40 ms); from sending the chunk that holds the last speech
    sample to the first chat.delta of the reply (silence_ms 600 of that is the detector
    waiting to be sure the patient stopped).
(3) Memory: STREAMS open streams (server_vad, 1 s of audio each), RSS before and after.
(4) Load: 20 sockets of 20 patients speaking at once in real time (server_vad, replies
    on) for about LOAD_SECONDS, while another socket pings every 100 ms, another patient
    chats (a chat.send every 2 s: time to its first delta) and another pushes a mutation
    every 200 ms (push -> sync.delta on a second device).

    just bench audio     (REPEATS=5 UTTERANCES=10 STREAMS=200 LOAD_SECONDS=20 to change)
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench._harness import SECRET, gateways, percentile, rss_bytes, services, stand_in_model
from gateway.auth import issue_token
from protocol.codec import encode_audio_frame
from tests.speech import BYTES_PER_MS, chunks, silence, synthesise

REPEATS = int(os.environ.get("REPEATS", "5"))
UTTERANCES = int(os.environ.get("UTTERANCES", "10"))
STREAMS = int(os.environ.get("STREAMS", "200"))
LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "20"))
CHUNK = 40 * BYTES_PER_MS
SENTENCES = [
    "My knee hurts when I walk up the stairs.",
    "The pain in my lower back is worse in the morning.",
    "I could not sleep last night because of the pain.",
    "Heat helps a little but the ache comes back in the evening.",
    "My shoulder feels stiff after I sit at the desk for an hour.",
    "I tried the breathing exercise and it calmed me down.",
]


def trimmed(pcm: bytes) -> bytes:
    """Speech without espeak's trailing quiet (so the last sample is the last sound)."""
    end = len(pcm)
    while end > 2 and abs(int.from_bytes(pcm[end - 2 : end], "little", signed=True)) < 300:
        end -= 2
    return pcm[:end]


def speech_of(seconds: float, spoken: list[bytes]) -> bytes:
    out = b""
    n = 0
    while len(out) < seconds * 1000 * BYTES_PER_MS:
        out += spoken[n % len(spoken)] + silence(150)
        n += 1
    return out[: int(seconds * 1000) * BYTES_PER_MS]


def token(patient: uuid.UUID, device: str) -> str:
    return issue_token(SECRET, role="patient", sub=patient, device_id=device)


@asynccontextmanager
async def socket(port: int, patient: uuid.UUID, device: str) -> AsyncIterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {token(patient, device)}"}
    async with connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=headers) as ws:
        ready = orjson.loads(await ws.recv())
        assert ready["type"] == "session.ready", ready
        yield ws


async def until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = orjson.loads(await ws.recv())
        if frame["type"] == kind:
            return frame
        if frame["type"] == "error":
            raise RuntimeError(frame["error"])


def start_frame(stream: uuid.UUID, **extra: Any) -> str:
    frame = {
        "type": "audio.start",
        "id": "s",
        "stream_id": str(stream),
        "thread_id": str(uuid.uuid4()),
        "format": "pcm16",
        "sample_rate": 16000,
        **extra,
    }
    return orjson.dumps(frame).decode()


async def send_audio(ws: ClientConnection, stream: uuid.UUID, pcm: bytes, pace: bool) -> float:
    """Send the audio, in real time (40 ms chunks) or at once (100 ms chunks, which keeps
    15 s of speech within the socket's burst); returns when the last chunk went."""
    for seq, piece in enumerate(chunks(pcm, CHUNK if pace else 100 * BYTES_PER_MS)):
        await ws.send(encode_audio_frame(stream, seq, piece))
        if pace:
            await asyncio.sleep(0.04)
    return time.time()


async def transcription(port: int, pcm: bytes) -> float:
    """Seconds from commit to transcript, for one stream sent at once."""
    stream = uuid.uuid4()
    async with socket(port, uuid.uuid4(), "bench") as ws:
        await ws.send(start_frame(stream, respond=False))
        await until(ws, "ack")
        await send_audio(ws, stream, pcm, pace=False)
        committed = time.monotonic()
        await ws.send(
            orjson.dumps({"type": "audio.commit", "id": "c", "stream_id": str(stream)}).decode()
        )
        await until(ws, "audio.transcript")
        return time.monotonic() - committed


async def vad_to_first_delta(port: int, sentence: bytes) -> float:
    """Seconds from the last speech sample sent to the reply's first delta."""
    stream = uuid.uuid4()
    before, after = silence(300), silence(1200)
    async with socket(port, uuid.uuid4(), "bench") as ws:
        await ws.send(start_frame(stream, turn_detection="server_vad"))
        await until(ws, "ack")
        spoken_end = len(before) + len(sentence)  # the byte after the last speech sample
        audio = before + sentence + after
        last_speech_sent = 0.0
        for seq, piece in enumerate(chunks(audio, CHUNK)):
            await ws.send(encode_audio_frame(stream, seq, piece))
            if seq * CHUNK < spoken_end <= (seq + 1) * CHUNK:
                last_speech_sent = time.time()
            await asyncio.sleep(0.04)
        await until(ws, "chat.delta")
        return time.time() - last_speech_sent


async def open_streams(port: int, count: int, pcm: bytes) -> list[ClientConnection]:
    sockets = []
    per_socket = 10
    for n in range(0, count, per_socket):
        headers = {"Authorization": f"Bearer {token(uuid.uuid4(), f'm{n}')}"}
        ws = await connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=headers)
        await ws.recv()
        for _ in range(min(per_socket, count - n)):
            stream = uuid.uuid4()
            await ws.send(start_frame(stream, turn_detection="server_vad"))
            await until(ws, "ack")
            await send_audio(ws, stream, pcm, pace=False)
        await ws.send(orjson.dumps({"type": "ping", "ts": 1}).decode())
        await until(ws, "pong")  # every chunk taken
        sockets.append(ws)
    return sockets


async def speaker(port: int, spoken: bytes, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with socket(port, uuid.uuid4(), "headset") as ws:

        async def listen() -> None:
            async for message in ws:
                kind = orjson.loads(message)["type"]
                counts[kind] = counts.get(kind, 0) + 1

        listener = asyncio.create_task(listen())
        stream = uuid.uuid4()
        await ws.send(start_frame(stream, turn_detection="server_vad"))
        seq = 0
        utterance = silence(300) + spoken + silence(1500)
        while not stop.is_set():
            for piece in chunks(utterance, CHUNK):
                await ws.send(encode_audio_frame(stream, seq, piece))
                seq += 1
                await asyncio.sleep(0.04)
        listener.cancel()


async def pinger(port: int, stop: asyncio.Event, rtts: list[float]) -> None:
    async with socket(port, uuid.uuid4(), "pinger") as ws:
        while not stop.is_set():
            sent = time.monotonic()
            await ws.send(orjson.dumps({"type": "ping"}).decode())
            await until(ws, "pong")
            rtts.append((time.monotonic() - sent) * 1000)
            await asyncio.sleep(0.1)


async def chatter(port: int, stop: asyncio.Event, firsts: list[float]) -> None:
    async with socket(port, uuid.uuid4(), "chat") as ws:
        thread = str(uuid.uuid4())
        while not stop.is_set():
            sent = time.monotonic()
            await ws.send(
                orjson.dumps(
                    {"type": "chat.send", "id": "c", "thread_id": thread, "text": "hi"}
                ).decode()
            )
            await until(ws, "chat.delta")
            firsts.append((time.monotonic() - sent) * 1000)
            await until(ws, "chat.done")
            await asyncio.sleep(2.0)


async def syncer(port: int, stop: asyncio.Event, latencies: list[float]) -> None:
    patient, thread = uuid.uuid4(), str(uuid.uuid4())
    async with socket(port, patient, "a") as pusher, socket(port, patient, "b") as receiver:
        n = 0
        while not stop.is_set():
            mutation = {
                "mutation_id": f"m{n}",
                "entity": "thread",
                "op": "upsert",
                "id": thread,
                "data": {"title": f"t{n}"},
            }
            sent = time.monotonic()
            push = {"type": "sync.push", "id": "p", "mutations": [mutation]}
            await pusher.send(orjson.dumps(push).decode())
            await until(receiver, "sync.delta")
            latencies.append((time.monotonic() - sent) * 1000)
            n += 1
            await asyncio.sleep(0.2)


def summary(samples: list[float], unit: str = "ms") -> str:
    if not samples:
        return "no samples"
    return (
        f"p50 {percentile(samples, 50):.1f} {unit}, p95 {percentile(samples, 95):.1f} {unit}, "
        f"p99 {percentile(samples, 99):.1f} {unit} ({len(samples)})"
    )


async def run(dsn: str, redis_url: str, spoken: list[bytes]) -> None:
    print(f"audio benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs", flush=True)
    async with stand_in_model(tokens=["Rest", " it", "."]) as base:
        common = {"OPENAI_BASE_URL": f"{base}/v1", "MAX_AUDIO_STREAMS": "10"}
        for provider in ("local", "openai"):
            async with gateways(1, dsn, redis_url, TRANSCRIPTION_PROVIDER=provider, **common) as [
                (_, port)
            ]:
                await transcription(port, speech_of(2, spoken))  # warm-up: the model loads
                for seconds in (2, 5, 15):
                    pcm = speech_of(seconds, spoken)
                    took = [await transcription(port, pcm) for _ in range(REPEATS)]
                    rtf = [t / seconds for t in took]
                    print(
                        f"(1) {provider}, {seconds} s of speech: latency "
                        f"{summary([t * 1000 for t in took])}; real-time factor median "
                        f"{percentile(rtf, 50):.3f} (max {max(rtf):.3f})",
                        flush=True,
                    )
        async with gateways(1, dsn, redis_url, TRANSCRIPTION_PROVIDER="local", **common) as [
            (pid, port)
        ]:
            await transcription(port, speech_of(2, spoken))  # warm-up
            waits = [
                await vad_to_first_delta(port, spoken[n % len(spoken)]) * 1000
                for n in range(UTTERANCES)
            ]
            print(f"(2) server_vad, last speech sample -> first reply delta: {summary(waits)}")
            before = rss_bytes(pid)
            sockets = await open_streams(port, STREAMS, speech_of(1, spoken))
            after = rss_bytes(pid)
            print(
                f"(3) {STREAMS} open server_vad streams with 1 s of audio each: RSS "
                f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
                f"{(after - before) / STREAMS / 1024:.1f} KiB per stream",
                flush=True,
            )
            for ws in sockets:
                await ws.close()
            stop = asyncio.Event()
            rtts: list[float] = []
            firsts: list[float] = []
            syncs: list[float] = []
            counts: dict[str, int] = {}
            tasks = [
                asyncio.create_task(speaker(port, spoken[n % len(spoken)], stop, counts))
                for n in range(20)
            ]
            tasks += [
                asyncio.create_task(pinger(port, stop, rtts)),
                asyncio.create_task(chatter(port, stop, firsts)),
                asyncio.create_task(syncer(port, stop, syncs)),
            ]
            await asyncio.sleep(LOAD_SECONDS)
            stop.set()
            await asyncio.wait(tasks, timeout=30)
            print(
                f"(4) 20 sockets speaking for {LOAD_SECONDS:g} s: "
                f"{counts.get('audio.transcript', 0)} transcripts, "
                f"{counts.get('error', 0)} errors (busy past the transcription limit); "
                f"ping round trip {summary(rtts)}; chat first delta {summary(firsts)}; "
                f"sync push -> delta {summary(syncs)}",
                flush=True,
            )


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        spoken = [trimmed(synthesise(text, directory)) for text in SENTENCES]
    with services() as (dsn, redis_url, _):
        asyncio.run(run(dsn, redis_url, spoken))


if __name__ == "__main__":
    main()
