"""The socket layer: the `/v1/ws` endpoint, sessions, the frame router, fan-out (hub and
brokers), presence, send queues and limits. It imports no feature package: features
register their frame handlers with the router (see docs/architecture.md)."""
