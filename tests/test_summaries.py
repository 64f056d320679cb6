"""Thread summaries: a run summarises each changed thread once (again only after it
changes), devices get the summary as a thread change, a deleted message takes its
thread's summary with it, a run killed midway resumes without summarising anything twice,
two processes scheduled at the same time make one run, and a question about an old
conversation gets that conversation's summary in its prompt."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from gateway.summaries.summarize import extractive
from storage.summaries import Transcript, Turn
from tests.chatkit import Upstream, chat_send, until
from tests.conftest import RedisServer, gateway_process
from tests.support import TEST_SECRET, TIMEOUT_S, Gateway, eventually, gateway_env, sample
from tests.test_sync import message, push, thread
from tests.wsclient import patient_token, recv, send, session


async def summary_changes(db: asyncpg.Connection, thread_id: uuid.UUID) -> int:
    """How many times the thread's summary was written (changes carrying one)."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM changes WHERE entity_id = $1 AND data ? 'summary'", thread_id
    )
    return count


async def threads_with_talk(ws: Any, count: int, prefix: str = "") -> list[uuid.UUID]:
    threads = [uuid.uuid4() for _ in range(count)]
    for n, t in enumerate(threads):
        said = f"{prefix}My lower back hurts when I sit for long. Heat helped a bit. ({n})"
        await push(
            ws, f"{prefix}p{n}", thread(f"{prefix}t{n}", t), message(f"{prefix}m{n}", t, said)
        )
    return threads


async def test_a_run_summarises_each_changed_thread_once_and_devices_get_it(
    gateway: Gateway, db: asyncpg.Connection
) -> None:
    patient = uuid.uuid4()
    job = gateway.services.summaries
    async with (
        session(gateway.ws_url, patient_token(patient, "headset")) as (headset, _),
        session(gateway.ws_url, patient_token(patient, "phone")) as (phone, _),
    ):
        first, second = await threads_with_talk(headset, 2)
        result = await job.run(patient_id=patient)
        assert (result.summarized, result.failed) == (2, 0)
        summaries: dict[str, str] = {}
        while len(summaries) < 2:
            frame = await recv(phone, skip=("presence", "sync.ack"))
            for change in frame.get("changes", []):
                if change["entity"] == "thread" and "summary" in (change["data"] or {}):
                    summaries[change["id"]] = change["data"]["summary"]
                    assert change["data"]["title"] == "Back pain"  # the title stays
                    assert change["data"]["summarized_at"].endswith("Z")
        assert summaries[str(first)].startswith("The patient said: My lower back hurts")
        memories = await db.fetchval(
            "SELECT count(*) FROM summary_memories WHERE patient_id = $1", patient
        )
        assert memories == 2

        # Again: nothing changed, nothing summarised. A new message: that thread only.
        assert (await job.run(patient_id=patient)).summarized == 0
        await push(headset, "more", message("more", first, "Now my knee aches too."))
        assert (await job.run(patient_id=patient)).summarized == 1
        assert await summary_changes(db, first) == 2 and await summary_changes(db, second) == 1

        # A deleted message takes its thread's summary with it, everywhere it was kept.
        gone = await db.fetchval(
            "SELECT id FROM messages WHERE thread_id = $1 ORDER BY created_at LIMIT 1", second
        )
        erase = {"mutation_id": "x", "entity": "message", "op": "delete", "id": str(gone)}
        assert (await push(headset, "x", erase))["applied"] == ["x"]
        row = await db.fetchrow("SELECT summary, summarized_at FROM threads WHERE id = $1", second)
        assert row is not None and row["summary"] is None and row["summarized_at"] is None
        assert await summary_changes(db, second) == 0
        assert not await db.fetchval(
            "SELECT count(*) FROM summary_memories WHERE thread_id = $1", second
        )


def test_the_offline_summary_keeps_the_patients_telling_sentences_within_its_length() -> None:
    now = datetime.now(UTC)
    said = Transcript(
        7,
        "Knee",
        [
            Turn("user", "Hello there. My knee hurts after walking. The weather is nice.", now),
            Turn("assistant", "I'm sorry your knee hurts.", now),
            Turn("user", "Ice helped a little. It was a 6 out of 10 yesterday.", now),
        ],
    )
    summary = extractive(said, 120)
    assert summary.startswith("The patient said: ") and len(summary) <= 120
    assert "My knee hurts after walking." in summary and "Ice helped a little." in summary
    assert "weather" not in summary and "sorry" not in summary
    assert summary.index("knee hurts") < summary.index("Ice helped")  # in the order said


async def test_a_run_killed_midway_resumes_without_summarising_anything_twice(
    gateway: Gateway, db: asyncpg.Connection, upstream: Upstream, database_url: str, tmp_path: Path
) -> None:
    patient = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient)) as (ws, _):
        threads = await threads_with_talk(ws, 6)
    # The model writes each summary over ~0.6 s: the run is killed part-way.
    upstream.behaviour.tokens = ["The patient's", " lower back", " hurts", " when sitting."]
    upstream.behaviour.token_delay_s = 0.15
    env = gateway_env(
        SECRET_KEY=TEST_SECRET,
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=upstream.url,
        SUMMARY_CONCURRENCY="1",
    )
    argv = [sys.executable, "-m", "gateway", "summarize", "--patient", str(patient)]
    run = await asyncio.create_subprocess_exec(*argv, env=env, cwd=tmp_path)

    async def some_done() -> bool:
        done = await db.fetchval(
            "SELECT count(*) FROM threads WHERE patient_id = $1 AND summary IS NOT NULL", patient
        )
        return bool(done >= 2)

    await eventually(some_done, timeout=TIMEOUT_S * 3, what="a few summaries")
    run.send_signal(signal.SIGKILL)
    await run.wait()
    left = await db.fetchval(
        "SELECT count(*) FROM threads WHERE patient_id = $1 AND summary IS NULL", patient
    )
    assert 0 < left < 6  # killed midway

    again = await asyncio.create_subprocess_exec(*argv, env=env, cwd=tmp_path)
    async with asyncio.timeout(TIMEOUT_S * 3):
        assert await again.wait() == 0
    for t in threads:
        assert await summary_changes(db, t) == 1
    summary = await db.fetchval("SELECT summary FROM threads WHERE id = $1", threads[0])
    assert summary == "The patient's lower back hurts when sitting."


async def test_two_processes_scheduled_at_once_make_one_run(
    gateway: Gateway,
    db: asyncpg.Connection,
    database_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    patient = uuid.uuid4()
    async with session(gateway.ws_url, patient_token(patient)) as (ws, _):
        threads = await threads_with_talk(ws, 4)
    # Midnight has passed today: each process finds today's run due as it starts.
    env = {"SUMMARY_AT": "00:00", "SUMMARY_TIMEZONE": "UTC"}
    async with (
        gateway_process(database_url, redis_server.url, tmp_path / "a.log", **env) as (_, a),
        gateway_process(database_url, redis_server.url, tmp_path / "b.log", **env) as (_, b),
    ):

        async def run_finished() -> bool:
            return bool(
                await db.fetchval("SELECT count(*) FROM summary_runs WHERE finished_at IS NOT NULL")
            )

        await eventually(run_finished, timeout=TIMEOUT_S * 3, what="the day's run")
        written = 0.0
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
            for url in (a, b):
                metrics = await http.get(
                    url.replace("ws://", "http://").replace("/v1/ws", "/metrics")
                )
                written += sample(metrics.text, "summaries_written_total")
    runs = await db.fetch("SELECT run_date, summarized FROM summary_runs")
    assert [(r["run_date"], r["summarized"]) for r in runs] == [(datetime.now(UTC).date(), 4)]
    assert written == 4
    for t in threads:
        assert await summary_changes(db, t) == 1


async def test_a_question_about_an_old_conversation_gets_its_summary(
    chat_gateway: Gateway, upstream: Upstream
) -> None:
    patient, old, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with session(chat_gateway.ws_url, patient_token(patient)) as (ws, _):
        await send(ws, chat_send(old, "My knee swelled up after the mountain hike", "a"))
        await until(ws, "chat.done")
        upstream.behaviour.tokens = ["Knee swelling", " after a mountain hike."]
        result = await chat_gateway.services.summaries.run(patient_id=patient)
        assert result.summarized == 1
        asked = upstream.behaviour.chat_requests[-1]["messages"]
        assert "Summarise this conversation" in asked[0]["content"]  # type: ignore[index]
        upstream.behaviour.tokens = ["Hello", "."]
        await send(ws, chat_send(new, "How did my knee do after the hike?", "b"))
        await until(ws, "chat.done")
    prompt: list[dict[str, str]] = upstream.behaviour.chat_requests[-1]["messages"]  # type: ignore[assignment]
    [earlier] = [m["content"] for m in prompt if m["content"].startswith("Summaries of")]
    assert "Knee swelling after a mountain hike." in earlier
