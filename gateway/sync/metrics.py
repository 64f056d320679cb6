"""Sync's Prometheus metrics (outcomes only, never ids or content)."""

from __future__ import annotations

from prometheus_client import Counter

SYNC_MUTATIONS = Counter(
    "sync_mutations_total", "Pushed mutations by outcome", ["outcome"]
)  # applied, duplicate, rejected
SYNC_PULLS = Counter("sync_pulls_total", "sync.pull requests and GET /sync/ calls answered")
