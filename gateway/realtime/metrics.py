"""The socket layer's Prometheus metrics. Labels hold frame types, error and close codes,
roles and broker names only: never ids or anything a patient wrote."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WS_CONNECTIONS = Gauge("websocket_connections_open", "Open WebSocket connections", ["role"])
for _role in ("patient", "clinician"):
    WS_CONNECTIONS.labels(_role)

FRAMES_IN = Counter("ws_frames_in_total", "Frames received from clients", ["type"])
FRAMES_OUT = Counter("ws_frames_out_total", "Frames queued to clients", ["type"])
ERRORS_SENT = Counter("ws_errors_total", "error frames sent to clients", ["code"])
CLOSES = Counter("ws_closes_total", "WebSocket closes initiated by the gateway", ["code"])
QUEUE_FULL_CLOSES = Counter(
    "ws_queue_full_closes_total", "Sockets closed because their send queue was full"
)
FANOUT_LATENCY = Histogram(
    "fanout_delivery_seconds",
    "From publish to enqueued on a local socket",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
# Observed by the hub for sync.delta frames; the write path stamps the origin.
SYNC_PUSH_TO_DELIVERY = Histogram(
    "sync_push_to_delivery_seconds",
    "From a write (push, REST or chat) reaching the gateway to its sync.delta enqueued on a socket",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BROKER_PUBLISH_FAILURES = Counter(
    "broker_publish_failures_total", "Publishes the broker could not send", ["broker"]
)
