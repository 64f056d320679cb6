"""The protocol as an AsyncAPI 3.0 document, from the same models as `protocol_schema`
(`painar-gateway asyncapi`, `GET /asyncapi.json`).

One channel, the socket at `/v1/ws`. The gateway's operations: it receives each client
frame (with the frames that answer it, paired by `id` → `ref`, as the operation's reply)
and sends each server frame. Error and close codes are components with their meanings.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from protocol.codes import CloseCode, ErrorCode
from protocol.frames import (
    CLIENT_FRAMES,
    PROTOCOL_VERSION,
    AnyClientFrame,
    MessageFields,
    ThreadFields,
)
from protocol.schema import server_frames_schema

CHANNEL = "socket"
REF = "#/components/schemas/{model}"

# What answers each client frame on the same socket (`ref` = its `id`); other frames it
# causes (deltas, transcripts) follow as server frames of their own.
REPLIES: dict[str, tuple[str, ...]] = {
    "auth": ("ack", "error"),
    "ping": ("pong",),
    "chat.send": ("ack", "error"),
    "chat.cancel": ("ack", "error"),
    "audio.start": ("ack", "error"),
    "audio.append": ("error",),
    "audio.commit": ("ack", "error"),
    "audio.cancel": ("error",),
    "sync.push": ("sync.ack", "error"),
    "sync.pull": ("sync.changes", "error"),
    "observe": ("ack", "observe.snapshot", "error"),
    "unobserve": ("ack", "error"),
}

BINARY_AUDIO = "audio.binary"

ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.BAD_FRAME: "not JSON, not an object, or a bad binary header",
    ErrorCode.UNKNOWN_TYPE: "a frame type the protocol does not have",
    ErrorCode.INVALID: "a field is missing or wrong; the message names it",
    ErrorCode.UNAUTHENTICATED: "missing, bad or expired token (the socket then closes 4401)",
    ErrorCode.FORBIDDEN: "the role may not send this frame, or the data is another patient's",
    ErrorCode.NOT_FOUND: "the thing named does not exist",
    ErrorCode.CONFLICT: "the change contradicts what is stored (deleted, or an id reused)",
    ErrorCode.TOO_LARGE: "over a size limit of session.ready's `limits`",
    ErrorCode.RATE_LIMITED: "over the frame budget; slow down (`retryable`)",
    ErrorCode.BUSY: "a reply or a write is already running where this one would go",
    ErrorCode.UPSTREAM_ERROR: "the model or transcription server failed",
    ErrorCode.UPSTREAM_TIMEOUT: "the model or transcription server did not answer in time",
    ErrorCode.UNAVAILABLE: "a part is down or the feature is off; `retryable` says if later works",
    ErrorCode.INTERNAL: "a fault of the gateway's; the session id helps a report",
}

CLOSE_MEANINGS: dict[CloseCode, str] = {
    CloseCode.NORMAL: "closed normally",
    CloseCode.GOING_AWAY: "the gateway is stopping; reconnect",
    CloseCode.POLICY: "repeated bad frames or rate abuse: do not retry as is",
    CloseCode.TOO_BIG: "a message above limits.max_frame_bytes",
    CloseCode.INTERNAL: "a fault of the gateway's; reconnect with backoff",
    CloseCode.SERVICE_RESTART: "a drain, after a `reconnect` frame: reconnect (another process)",
    CloseCode.TRY_AGAIN_LATER: "overload or a slow reader: reconnect later, pull from your version",
    CloseCode.UNAUTHENTICATED: "missing, bad or expired token: get a new one, do not retry as is",
    CloseCode.FORBIDDEN: "the token may not open a socket (an admin token): do not retry",
}


def _schemas() -> tuple[dict[str, Any], list[str], list[str]]:
    """Every model's schema under components/schemas, and the client and server frame
    models' names (in their unions' order)."""
    client = TypeAdapter(AnyClientFrame).json_schema(ref_template=REF)
    server = server_frames_schema(REF)
    schemas: dict[str, Any] = {**client.pop("$defs"), **server.pop("$defs")}
    for model in (ThreadFields, MessageFields):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["ErrorCode"] = {
        "type": "string",
        "enum": [code.value for code in ErrorCode],
        "description": "; ".join(f"`{c.value}`: {m}" for c, m in ERROR_MEANINGS.items()),
    }
    schemas["CloseCode"] = {
        "type": "integer",
        "enum": [code.value for code in CloseCode],
        "description": "; ".join(f"{int(c)}: {m}" for c, m in CLOSE_MEANINGS.items()),
    }

    def names(union: dict[str, Any]) -> list[str]:
        return [str(ref["$ref"]).rsplit("/", 1)[1] for ref in union["oneOf"]]

    return schemas, names(client), names(server)


def _message(frame_type: str, model: str, summary: str) -> dict[str, Any]:
    return {
        "name": frame_type,
        "title": frame_type,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model=model)},
    }


def _reference(frame_type: str) -> dict[str, str]:
    return {"$ref": f"#/channels/{CHANNEL}/messages/{frame_type}"}


def asyncapi_document(server_host: str = "localhost:8000") -> dict[str, Any]:
    schemas, client_models, server_models = _schemas()
    client_types = list(CLIENT_FRAMES)
    server_types = [
        schemas[model]["properties"]["type"]["const"]
        if "const" in schemas[model]["properties"]["type"]
        else schemas[model]["properties"]["type"]["default"]
        for model in server_models
    ]
    messages: dict[str, Any] = {}
    for frame_type, model in zip(client_types, client_models, strict=True):
        roles = sorted(CLIENT_FRAMES[frame_type].senders)
        messages[frame_type] = _message(frame_type, model, f"client → gateway; sent by {roles}")
    for frame_type, model in zip(server_types, server_models, strict=True):
        messages[frame_type] = _message(frame_type, model, "gateway → client")
    messages[BINARY_AUDIO] = {
        "name": BINARY_AUDIO,
        "title": "binary audio chunk",
        "summary": "client → gateway, a binary WebSocket message: an audio stream's chunk",
        "description": (
            "16 bytes: the stream_id (the UUID's bytes), 4 bytes: seq (unsigned 32-bit "
            "big-endian), then the chunk's audio bytes. The same as `audio.append` without "
            "base64; the stream is opened by `audio.start`."
        ),
        "contentType": "application/octet-stream",
        "payload": {"type": "string", "format": "binary"},
    }
    operations: dict[str, Any] = {}
    for frame_type in client_types:
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "summary": f"a client sends `{frame_type}`",
            "messages": [_reference(frame_type)],
        }
        answers = REPLIES[frame_type]
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "messages": [_reference(answer) for answer in answers],
        }
        operations[f"receive.{frame_type}"] = operation
    operations[f"receive.{BINARY_AUDIO}"] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "summary": "a client sends audio as a binary message",
        "messages": [_reference(BINARY_AUDIO)],
    }
    for frame_type in server_types:
        operations[f"send.{frame_type}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{CHANNEL}"},
            "summary": f"the gateway sends `{frame_type}`",
            "messages": [_reference(frame_type)],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "PainAR Gateway",
            "version": str(PROTOCOL_VERSION),
            "description": (
                "The realtime protocol of PainAR Gateway (docs/protocol.md): one WebSocket "
                "per device. Text frames are JSON objects with a `type`; a client frame's "
                "`id` comes back as `ref` on the frame that answers it (`ack`, `error`, "
                "`sync.ack`, `sync.changes`). Binary frames carry audio. Error codes: "
                "components/schemas/ErrorCode; close codes: components/schemas/CloseCode."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": server_host,
                "protocol": "ws",
                "pathname": "/v1/ws",
                "description": (
                    "Authenticate with `Authorization: Bearer <JWT>` on the upgrade, or with "
                    "an `auth` frame first (browsers). Subprotocol `painar.v1`, optional."
                ),
            }
        },
        "channels": {
            CHANNEL: {
                "address": "/v1/ws",
                "title": "A device's socket",
                "messages": messages,
            }
        },
        "operations": operations,
        "components": {"schemas": schemas},
    }
