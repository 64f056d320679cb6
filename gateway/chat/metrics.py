"""Chat's Prometheus metrics: latencies, rates and outcomes, never ids or text."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CHAT_FIRST_TOKEN_UPSTREAM = Histogram(
    "chat_first_token_upstream_seconds",
    "From the request sent to the model to its first token (the model's own latency)",
    buckets=(*_LATENCY_BUCKETS, 5.0, 10.0, 30.0),
)
CHAT_FIRST_TOKEN_ADDED = Histogram(
    "chat_first_token_added_seconds",
    "Time to first token the gateway adds: from chat.send received to the first delta "
    "published, less the model's own time to first token (store, embed, retrieve, prompt)",
    buckets=_LATENCY_BUCKETS,
)
CHAT_TOKENS = Counter("chat_tokens_total", "Pieces of reply text received from the model")
CHAT_TOKEN_RATE = Histogram(
    "chat_reply_tokens_per_second",
    "Tokens per second of each reply, from its first token to its last",
    buckets=(5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
CHAT_REPLIES = Counter("chat_replies_total", "Replies ended, by finish reason", ["finish_reason"])
RETRIEVAL_LATENCY = Histogram(
    "retrieval_seconds",
    "Retrieval of a patient's nearest memories for a prompt",
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "chat_upstream_errors_total",
    "Failures talking to the model or embedding server, by kind",
    ["kind"],
)  # rate_limited, server_error, client_error, timeout, connection, stream_cut, embedding
