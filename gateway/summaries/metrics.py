"""Summaries' Prometheus metrics (counts and durations, never text)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SUMMARIZED = Counter("summaries_written_total", "Threads summarised")
SUMMARY_FAILURES = Counter(
    "summaries_failed_total", "Threads whose summary failed (the model, the embedding)"
)
SUMMARY_RUN_SECONDS = Histogram(
    "summaries_run_seconds",
    "Duration of one summary run (scheduled or on demand)",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)
