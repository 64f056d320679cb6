"""Memories: one embedding per message, and retrieval of a patient's nearest ones.

Retrieval is always filtered by the patient's id in SQL, whatever the strategy, so no
input can return another patient's memory. Two strategies (bench/retrieval.py measures
both; docs/benchmarks.md has the figures behind the sizes here):

- exact: the patient's own rows (btree on patient_id), every distance computed. Exact,
  and fast while a patient has few memories; the vectors are stored in the row
  (sql/0004), which makes this scan several times cheaper than out of line. Most
  patients stay in this range.
- graph: a patient with more memories than that has a graph of their own
  (storage/memory_graphs.py), an HNSW index over their vectors alone, searched with a
  candidate list (`ef_search`) that grows with its size so that questions far from
  anything the patient said still find the right memories. Its rows are read joined
  back to `memories` and `messages`, so the patient filter and deletions hold there too.

The planner must be kept on the graph's index: after a few calls on a connection
PostgreSQL may switch to a generic plan that reads the table and sorts — exact results
at exact-search cost. `enable_sort = off` (for that transaction only) leaves it the
index order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from storage.database import Connection
from storage.memory_graphs import graph_size, graph_table

DEFAULT_K = 6
DEFAULT_EXACT_LIMIT = 2000  # see exact_limit_for
# A graph's candidate list (hnsw.ef_search): a twelfth of its size, within these bounds.
# Questions near the patient's history find exact results at any size with the smallest;
# a question on a topic they never raised needs a longer list as the graph grows (recall
# 0.99 at 5,000 memories with 400, 0.82 at 20,000; 1000, pgvector's largest, gets 0.95
# there but doubles the time of every retrieval, the time to first token included).
# docs/benchmarks.md has the figures.
GRAPH_EF_MIN = 200
GRAPH_EF_MAX = 400
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


# Each distance is computed once, and only the k nearest are joined to their messages.
# (A deleted message's memory is deleted with it; `NOT deleted` is a second guard.)
_EXACT = """
    SELECT m.message_id, ms.role, ms.content, ms.created_at, 1 - m.distance AS similarity
    FROM (SELECT message_id, embedding <=> $2 AS distance FROM memories
          WHERE patient_id = $1 AND message_id <> ALL($4::uuid[])
          ORDER BY distance LIMIT $3) m
    JOIN messages ms ON ms.id = m.message_id
    WHERE NOT ms.deleted
    ORDER BY m.distance
"""
# The graph's rows are read joined back to `memories` (a graph row that raced a delete
# has none) with the patient's id. With iterative scan the index may return rows
# slightly out of order; they are sorted again.
_GRAPH = """
    SELECT m.message_id, ms.role, ms.content, ms.created_at, 1 - g.distance AS similarity
    FROM (SELECT message_id, embedding <=> $2 AS distance FROM {graph}
          WHERE message_id <> ALL($4::uuid[])
          ORDER BY distance LIMIT $3) g
    JOIN memories m ON m.message_id = g.message_id AND m.patient_id = $1
    JOIN messages ms ON ms.id = m.message_id
    WHERE NOT ms.deleted
    ORDER BY g.distance
"""


def graph_ef_search(size: float, k: int) -> int:
    """The candidate list for a graph of about `size` memories (docs/benchmarks.md)."""
    return max(k, min(GRAPH_EF_MAX, max(GRAPH_EF_MIN, int(size) // 12)))


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
) -> list[Memory]:
    """The patient's `k` memories most similar to `embedding` (at least `min_similarity`),
    most similar first, leaving out the messages in `exclude`."""
    args = (patient_id, list(embedding), k, list(exclude))
    size = await graph_size(conn, patient_id)
    if size is None:
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
                str(graph_ef_search(size, k)),
                str(HNSW_MAX_SCAN_TUPLES),
                str(HNSW_SCAN_MEM_MULTIPLIER),
            )
            rows = await conn.fetch(_GRAPH.format(graph=graph_table(patient_id)), *args)
    return [
        Memory(r["message_id"], r["role"], r["content"], r["created_at"], r["similarity"])
        for r in rows
        if r["similarity"] >= min_similarity
    ]
