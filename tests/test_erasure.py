"""Erasure: a delete removes the content (the row, its memory, and every earlier change of
it), and `painar-gateway erase --patient` removes everything of a patient; versions stay
gapless and devices converge."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import RedisServer
from tests.support import TEST_SECRET, gateway_env, make_settings, serve_gateway
from tests.test_pain_reports import pain_report
from tests.test_sync import message, push, thread
from tests.wsclient import patient_token, recv, send, session

REGION = "M10 10 L20 20"


async def pull_all(ws: Any) -> list[dict[str, Any]]:
    await send(ws, {"type": "sync.pull", "id": "all", "since": 0})
    while (page := await recv(ws))["type"] != "sync.changes":
        pass
    assert not page["has_more"]
    changes: list[dict[str, Any]] = page["changes"]
    assert [c["version"] for c in changes] == list(range(1, len(changes) + 1))  # gapless
    return changes


async def stored_text(db: asyncpg.Connection, patient: uuid.UUID) -> list[str]:
    """Every place a patient's words could remain, as found in the database."""
    rows = await db.fetch(
        """
        SELECT content AS text FROM messages WHERE patient_id = $1 AND content <> ''
        UNION ALL SELECT svg_path FROM messages WHERE patient_id = $1 AND svg_path IS NOT NULL
        UNION ALL SELECT title FROM threads WHERE patient_id = $1 AND title <> ''
        UNION ALL SELECT data::text FROM changes WHERE patient_id = $1 AND data IS NOT NULL
        UNION ALL SELECT 'memory' FROM memories WHERE patient_id = $1
        UNION ALL SELECT 'queued' FROM embedding_queue WHERE patient_id = $1
        UNION ALL SELECT concat_ws(' ', intensity, region, svg_path, note, qualities::text)
            FROM pain_reports WHERE patient_id = $1
              AND (intensity IS NOT NULL OR region IS NOT NULL OR note IS NOT NULL
                   OR svg_path IS NOT NULL OR qualities <> '{}')
        """,
        patient,
    )
    return [row["text"] for row in rows]


async def test_a_delete_removes_the_content_of_every_version(
    database_url: str, db: asyncpg.Connection
) -> None:
    patient, thread_id, message_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with (
        serve_gateway(make_settings(), database_url) as gw,
        session(gw.ws_url, patient_token(patient)) as (ws, _),
    ):
        await push(ws, "t", thread(thread_id=thread_id, mutation_id="t", title="Knee diary"))
        first = message("m1", thread_id, "KNEE-first-words", id=message_id, svg_path=REGION)
        await push(ws, "m1", first)
        await push(ws, "m2", message("m2", thread_id, "KNEE-second-words", id=message_id))
        await push(ws, "keep", message("keep", thread_id, "Stays"))
        await db.execute(
            "INSERT INTO memories (message_id, patient_id, embedding) "
            "VALUES ($1, $2, array_fill(0.1::real, ARRAY[$3::int])::vector) ON CONFLICT DO NOTHING",
            message_id,
            patient,
            gw.services.settings.vector_dim,
        )
        delete = {"mutation_id": "d", "entity": "message", "op": "delete", "id": str(message_id)}
        assert (await push(ws, "d", delete))["applied"] == ["d"]
        changes = await pull_all(ws)
        assert "KNEE" not in str(changes) and REGION not in str(changes)
        erased = [c for c in changes if c["id"] == str(message_id)]
        assert [(c["op"], c["data"]) for c in erased] == [("delete", None)] * 3
        assert "KNEE" not in str(await stored_text(db, patient))
        assert (
            await db.fetchval("SELECT count(*) FROM memories WHERE message_id = $1", message_id)
            == 0
        )
        # A replay of the deleted message's old write is still known (not re-created).
        assert (await push(ws, "m1", first))["duplicates"] == ["m1"]
        # A thread's delete erases its title and every message in it.
        gone = {"mutation_id": "dt", "entity": "thread", "op": "delete", "id": str(thread_id)}
        assert (await push(ws, "dt", gone))["applied"] == ["dt"]
        assert await stored_text(db, patient) == []
        assert all(c["data"] is None for c in await pull_all(ws))


def erase(patient: uuid.UUID, database_url: str, redis_url: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "erase", "--patient", str(patient)],
        cwd=cwd,
        env=gateway_env(SECRET_KEY=TEST_SECRET, DATABASE_URL=database_url, REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_erase_removes_everything_of_a_patient_and_open_devices_see_it(
    database_url: str, db: asyncpg.Connection, redis_server: RedisServer, tmp_path: Path
) -> None:
    patient, other = uuid.uuid4(), uuid.uuid4()
    threads = [uuid.uuid4(), uuid.uuid4()]
    settings = make_settings(redis_url=redis_server.url)
    async with (
        serve_gateway(settings, database_url) as gw,
        session(gw.ws_url, patient_token(patient, "headset")) as (ws, _),
        session(gw.ws_url, patient_token(other, "headset")) as (bystander, _),
    ):
        for n, thread_id in enumerate(threads):
            await push(ws, f"t{n}", thread(f"t{n}", thread_id, title=f"HIP-title-{n}"))
            await push(ws, f"m{n}", message(f"m{n}", thread_id, f"HIP-words-{n}", svg_path=REGION))
        report = pain_report("r", uuid.uuid4(), region="HIP-region", note="HIP-note")
        await push(ws, "r", report)
        await push(bystander, "o", thread("o", uuid.uuid4(), title="Untouched"))
        before = await db.fetchval("SELECT sync_version FROM patients WHERE id = $1", patient)
        out = await asyncio.to_thread(erase, patient, database_url, redis_server.url, tmp_path)
        assert "2 thread(s) and 1 pain report(s) deleted" in out
        while (delta := await recv(ws))["type"] != "sync.delta" or delta["version"] <= before:
            pass  # the erasure reaches the open device live
        assert [(c["entity"], c["op"]) for c in delta["changes"]] == [
            ("thread", "delete"),
            ("thread", "delete"),
            ("pain_report", "delete"),
        ]
        assert {c["id"] for c in delta["changes"]} == {*map(str, threads), report["id"]}
        assert delta["version"] == before + 3
        changes = await pull_all(ws)
        assert len(changes) == before + 3 and all(c["data"] is None for c in changes)
        assert await stored_text(db, patient) == []
        assert await stored_text(db, other) != []  # another patient keeps everything
    trail = await db.fetch(
        "SELECT action, actor_role FROM access_audit WHERE patient_id = $1", patient
    )
    assert [(r["action"], r["actor_role"]) for r in trail] == [("erase", "admin")]
