"""Memories: one embedding per message, and retrieval of a patient's nearest ones.

Retrieval is always filtered by the patient's id in SQL, whatever the strategy, so no
input can return another patient's memory. Two strategies, chosen by how many memories
the patient has (bench/retrieval.py measures both; docs/benchmarks.md has the figures
behind the limits here):

- exact: the patient's own rows (btree on patient_id), every distance computed. Exact,
  and fast while a patient has few memories; the vectors are stored in the row
  (sql/0004), which makes this scan several times cheaper than out of line. Most
  patients stay in this range.
- approximate: the HNSW index with pgvector's iterative scan (0.8+), which keeps scanning
  until enough rows pass the patient filter; used past `exact_limit` memories, where an
  exact scan gets slow. Below a few thousand memories a filtered graph search finds a
  small patient's rows unreliably, so small patients never go through it.

The planner must be kept on the index for the approximate query: after a few calls on a
connection PostgreSQL switches to a generic plan that, assuming an average patient, reads
the btree and sorts — exact results at exact-search cost. `enable_sort = off` (for that
transaction only) leaves it the index order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from storage.database import Connection

DEFAULT_K = 6
DEFAULT_EXACT_LIMIT = 2000  # see exact_limit_for
HNSW_EF_SEARCH = 100
HNSW_MAX_SCAN_TUPLES = 200_000
# An iterative scan stops when it has used this many times work_mem, found or not.
HNSW_SCAN_MEM_MULTIPLIER = 16


@dataclass(frozen=True)
class Memory:
    message_id: UUID
    role: str
    content: str
    created_at: datetime
    similarity: float  # cosine similarity, 1 = same direction


def content_sha(text: str) -> bytes:
    """Which text a vector is of (as sql/0006 computes it)."""
    return hashlib.sha256(text.encode()).digest()


async def store_memory(
    conn: Connection, patient_id: UUID, message_id: UUID, embedding: Sequence[float], text: str
) -> None:
    """Store (or replace) the embedding of one of the patient's messages, if `text` is still
    the message's content (an edit or a delete meanwhile makes the vector stale), and take
    that version off the embedding queue."""
    await store_memories(conn, [(patient_id, message_id, embedding, text)])


async def store_memories(
    conn: Connection, items: Sequence[tuple[UUID, UUID, Sequence[float], str]]
) -> None:
    """`store_memory` for many (patient, message, embedding, text) at once: the inserts in
    one pipelined batch, the queue rows in one statement."""
    shas = [content_sha(text) for _, _, _, text in items]
    await conn.executemany(
        """
        INSERT INTO memories AS m (message_id, patient_id, embedding, content_sha)
        SELECT $1, $2, $3, $4 FROM messages ms
        WHERE ms.id = $1 AND ms.patient_id = $2 AND NOT ms.deleted
          AND sha256(convert_to(ms.content, 'UTF8')) = $4
        ON CONFLICT (message_id) DO UPDATE
            SET embedding = EXCLUDED.embedding, content_sha = EXCLUDED.content_sha
        """,
        [
            (message_id, patient_id, list(vector), sha)
            for (patient_id, message_id, vector, _), sha in zip(items, shas, strict=True)
        ],
    )
    await conn.execute(
        """
        DELETE FROM embedding_queue q
        USING unnest($1::uuid[], $2::bytea[]) AS i (message_id, sha)
        WHERE q.message_id = i.message_id AND q.content_sha = i.sha
        """,
        [message_id for _, message_id, _, _ in items],
        shas,
    )


_SELECT = """
    SELECT m.message_id, ms.role, ms.content, ms.created_at,
           1 - (m.embedding <=> $2) AS similarity
    FROM memories m JOIN messages ms ON ms.id = m.message_id
    WHERE m.patient_id = $1 AND NOT ms.deleted AND ms.id <> ALL($4::uuid[])
"""

# `+ 0` makes the ordering an expression the HNSW index cannot serve: the planner then
# reads the patient's rows through the btree and sorts them (exact search).
_EXACT = _SELECT + "ORDER BY (m.embedding <=> $2) + 0 LIMIT $3"
# With iterative scan the index may return rows slightly out of order; sort them again.
_APPROXIMATE = (
    "SELECT * FROM (" + _SELECT + "ORDER BY m.embedding <=> $2 LIMIT $3) nearest "
    "ORDER BY similarity DESC"
)


def exact_limit_for(vector_dim: int) -> int:
    """Up to how many memories exact search stays within ~15 ms at p99 on 2 cores
    (measured at 384 and 1536 dims, docs/benchmarks.md); above 1536 dims the cost per row
    grows with the size, so the limit shrinks in proportion (not measured)."""
    if vector_dim <= 1536:
        return DEFAULT_EXACT_LIMIT
    return DEFAULT_EXACT_LIMIT * 1536 // vector_dim


async def nearest_memories(
    conn: Connection,
    patient_id: UUID,
    embedding: Sequence[float],
    *,
    k: int = DEFAULT_K,
    min_similarity: float = 0.0,
    exclude: Sequence[UUID] = (),
    exact_limit: int = DEFAULT_EXACT_LIMIT,
) -> list[Memory]:
    """The patient's `k` memories most similar to `embedding` (at least `min_similarity`),
    most similar first, leaving out the messages in `exclude`."""
    query = list(embedding)
    count = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM memories WHERE patient_id = $1 LIMIT $2) few",
        patient_id,
        exact_limit + 1,
    )
    args = (patient_id, query, k, list(exclude))
    if count <= exact_limit:
        rows = await conn.fetch(_EXACT, *args)
    else:
        async with conn.transaction():
            # Iterative scan came with pgvector 0.8; older servers lack the settings.
            await conn.execute(
                """
                SELECT set_config('hnsw.ef_search', $1, true),
                       CASE WHEN current_setting('hnsw.iterative_scan', true) IS NOT NULL
                            THEN set_config('hnsw.iterative_scan', 'relaxed_order', true) END,
                       CASE WHEN current_setting('hnsw.max_scan_tuples', true) IS NOT NULL
                            THEN set_config('hnsw.max_scan_tuples', $2, true) END,
                       CASE WHEN current_setting('hnsw.scan_mem_multiplier', true) IS NOT NULL
                            THEN set_config('hnsw.scan_mem_multiplier', $3, true) END,
                       set_config('enable_sort', 'off', true)
                """,
                str(max(HNSW_EF_SEARCH, k)),
                str(HNSW_MAX_SCAN_TUPLES),
                str(HNSW_SCAN_MEM_MULTIPLIER),
            )
            rows = await conn.fetch(_APPROXIMATE, *args)
    return [
        Memory(r["message_id"], r["role"], r["content"], r["created_at"], r["similarity"])
        for r in rows
        if r["similarity"] >= min_similarity
    ]
