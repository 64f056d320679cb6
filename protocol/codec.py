"""Bytes to frames and back. Decoding never raises: every input yields a client frame
or a ProtocolError that says what was wrong (and the frame's `id`, when it had one)."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from protocol.codes import ErrorCode
from protocol.frames import (
    CLIENT_FRAMES,
    MAX_ID_CHARS,
    AudioAppend,
    ClientFrame,
    Error,
    ErrorBody,
    ServerFrame,
)

_FIELD_FIRST = re.compile(r"^[a-z_]+: ")
# Binary audio frame: 16 bytes stream_id (UUID), 4 bytes seq (unsigned, big-endian), audio.
AUDIO_HEADER = struct.Struct(">16sI")


@dataclass(frozen=True)
class ProtocolError:
    code: ErrorCode
    message: str
    ref: str | None = None
    retryable: bool = False
    patient_id: UUID | None = None

    def frame(self) -> Error:
        return Error(error=ErrorBody(**self.__dict__))


def decode_client_frame(data: str | bytes) -> ClientFrame | ProtocolError:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return ProtocolError(ErrorCode.BAD_FRAME, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return ProtocolError(ErrorCode.BAD_FRAME, "frame is not a JSON object")
    return validate_client_frame(obj)


def validate_client_frame(obj: dict[str, Any]) -> ClientFrame | ProtocolError:
    frame_id = obj.get("id")
    ref = frame_id if isinstance(frame_id, str) and 0 < len(frame_id) <= MAX_ID_CHARS else None
    kind = obj.get("type")
    if not isinstance(kind, str):
        return ProtocolError(ErrorCode.INVALID, "type: a string is required", ref)
    model = CLIENT_FRAMES.get(kind)
    if model is None:
        return ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type: unknown frame type {kind[:40]!r}", ref)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        return ProtocolError(ErrorCode.INVALID, describe(exc), ref)


def describe(exc: ValidationError) -> str:
    """The first problem, as `field.path: what is wrong` (never the offending value)."""
    error = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"] and _FIELD_FIRST.match(message):
        return message  # a check across fields, which names the field itself
    where = ".".join(str(part) for part in error["loc"]) or "frame"
    return f"{where}: {message}"


def decode_audio_frame(data: bytes) -> AudioAppend | ProtocolError:
    if len(data) < AUDIO_HEADER.size:
        return ProtocolError(
            ErrorCode.BAD_FRAME,
            "binary frame: expected a 20-byte header (stream_id, seq) before the audio",
        )
    stream_id, seq = AUDIO_HEADER.unpack_from(data)
    return AudioAppend.model_construct(
        type="audio.append", stream_id=UUID(bytes=stream_id), seq=seq, audio=data[20:]
    )


def encode_audio_frame(stream_id: UUID, seq: int, audio: bytes) -> bytes:
    return AUDIO_HEADER.pack(stream_id.bytes, seq) + audio


def encode(frame: ServerFrame) -> bytes:
    """A server frame as JSON text; optional fields that are unset are left out."""
    return orjson.dumps(frame.model_dump(mode="json", exclude_none=True))
