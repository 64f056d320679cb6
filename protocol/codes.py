"""Error codes carried in `error` frames and WebSocket close codes (docs/protocol.md)."""

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    BAD_FRAME = "bad_frame"  # not JSON, not an object, bad binary header
    UNKNOWN_TYPE = "unknown_type"
    INVALID = "invalid"  # schema violation; the message names the field
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"  # a reply is already streaming in that thread
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008  # repeated bad frames or rate abuse: do not retry as is
    TOO_BIG = 1009
    INTERNAL = 1011
    SERVICE_RESTART = 1012  # drain: a `reconnect` frame came first; reconnect is fine
    TRY_AGAIN_LATER = 1013  # overload or slow consumer; resume from the last sync version
    UNAUTHENTICATED = 4401  # missing, bad or expired token, auth timeout
    FORBIDDEN = 4403
