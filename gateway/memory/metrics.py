"""Memory's Prometheus metrics (counts and latencies, never text)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EMBEDDING_QUEUE_DEPTH = Gauge("embedding_queue_depth", "Messages waiting for their embedding")
EMBEDDED = Counter("embedding_queue_embedded_total", "Messages embedded from the queue")
EMBEDDING_BATCH_SECONDS = Histogram(
    "embedding_queue_batch_seconds",
    "Time to embed one batch from the queue (the embedding call)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EMBEDDING_FAILURES = Counter(
    "embedding_queue_failures_total", "Batches the embedding server failed (retried later)"
)
