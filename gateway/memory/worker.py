"""The embedding worker, one per gateway process: claims due messages from the queue,
embeds them in one call per batch (no connection held meanwhile), stores each memory if
its message still has that text. A failed batch is due again after a doubling delay (at
most EMBED_MAX_BACKOFF_S); nothing is lost, and a restart resumes where it stopped.

It also gives a patient their own memory graph once they have more memories than
retrieval scans exactly (storage/memory_graphs.py): right after a batch for the patients
in it, and every GRAPH_SWEEP_S for all (memories stored by the chat itself, a promotion
that failed, a database from before graphs).

It is background work: after the embedding call and after each few inserts (an HNSW
insert for a patient with a graph) it rests EMBED_REST_FACTOR times as long as they took
(longer when the machine is busy, since they then take longer), so that under a burst of
writes the queue lags behind rather than the patients' own requests
(docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from uuid import UUID

from gateway.memory.metrics import (
    EMBEDDED,
    EMBEDDING_BATCH_SECONDS,
    EMBEDDING_FAILURES,
    EMBEDDING_QUEUE_DEPTH,
)
from gateway.ops.polling import Every, poll_forever
from gateway.providers.base import Embedder
from gateway.settings import Settings
from storage.database import Database
from storage.embedding_queue import back_off, claim, depth
from storage.memories import exact_limit_for, store_memories
from storage.memory_graphs import PromotionDelayed, due_for_graphs, promote

log = logging.getLogger(__name__)

DEPTH_EVERY_S = 5.0
GRAPH_SWEEP_S = 600.0
STORE_CHUNK = 4


@dataclass(frozen=True)
class MemoryConfig:
    batch: int
    poll_s: float
    lease_s: float
    max_backoff_s: float
    rest_factor: float  # after a batch, rest this many times as long as it took
    graph_limit: int  # a patient with more memories than this gets a memory graph

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryConfig:
        return cls(
            batch=settings.embed_batch,
            poll_s=settings.embed_poll_s,
            # A claimed batch that is not done by then (its process died) is due again.
            lease_s=settings.chat_connect_timeout_s + settings.chat_idle_timeout_s + 30,
            max_backoff_s=settings.embed_max_backoff_s,
            rest_factor=settings.embed_rest_factor,
            graph_limit=(
                exact_limit_for(settings.vector_dim)
                if settings.retrieval_exact_limit is None
                else settings.retrieval_exact_limit
            ),
        )


class EmbeddingWorker:
    def __init__(self, config: MemoryConfig, *, db: Database, embedder: Embedder) -> None:
        self.config = config
        self.db = db
        self.embedder = embedder
        self._task: asyncio.Task[None] | None = None
        self._depth_due = Every(DEPTH_EVERY_S)
        self._sweep_due = Every(GRAPH_SWEEP_S)

    def start(self) -> None:
        work = poll_forever(
            self._step, batch=self.config.batch, poll_s=self.config.poll_s, what="embedding"
        )
        self._task = asyncio.create_task(work)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run_once(self) -> int:
        """Embed one batch of what is due; how many messages were taken."""
        config = self.config
        async with self.db.acquire() as conn:
            due = await claim(conn, config.batch, config.lease_s)
        if not due:
            return 0
        started = time.perf_counter()
        try:
            vectors = await self.embedder.embed([d.content for d in due])
        except Exception as exc:
            EMBEDDING_FAILURES.inc()
            log.warning("embedding %d queued messages failed: %s", len(due), type(exc).__name__)
            delays = [min(config.max_backoff_s, 2.0 ** min(d.attempts, 16)) for d in due]
            async with self.db.acquire() as conn:
                await back_off(conn, [d.message_id for d in due], delays)
            return len(due)
        took = time.perf_counter() - started
        EMBEDDING_BATCH_SECONDS.observe(took)
        await asyncio.sleep(took * self.config.rest_factor)
        stored = [
            (item.patient_id, item.message_id, vector, item.content)
            for item, vector in zip(due, vectors, strict=True)
        ]
        # A few at a time, resting between: each memory is an HNSW insert in PostgreSQL,
        # and a whole batch at once held up everyone's writes behind it.
        for start in range(0, len(stored), STORE_CHUNK):
            began = time.monotonic()
            async with self.db.acquire() as conn:
                await store_memories(conn, stored[start : start + STORE_CHUNK])
            await asyncio.sleep((time.monotonic() - began) * self.config.rest_factor)
        EMBEDDED.inc(len(due))
        await self.promote_due([item.patient_id for item in due])
        return len(due)

    async def promote_due(self, patient_ids: list[UUID] | None = None) -> int:
        """Give memory graphs to those of `patient_ids` (or of all patients) who are past
        the limit without one; how many got one."""
        async with self.db.acquire() as conn:
            due = await due_for_graphs(conn, self.config.graph_limit, patient_ids)
        promoted = 0
        for patient_id in due:
            try:
                async with self.db.acquire() as conn:
                    promoted += await promote(conn, patient_id)
            except PromotionDelayed:  # the next batch or sweep tries again
                log.info("a memory graph waits for an old transaction to end")
        return promoted

    async def _step(self) -> int:
        taken = await self.run_once()
        if self._depth_due.due():
            async with self.db.acquire() as conn:
                EMBEDDING_QUEUE_DEPTH.set(await depth(conn))
        await self._sweep()
        return taken

    async def _sweep(self) -> None:
        if self._sweep_due.due():
            await self.promote_due()
