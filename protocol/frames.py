"""Every frame of protocol version 1 (docs/protocol.md) as a pydantic model.

Client frames are validated strictly (unknown fields are refused, so a typo in a field
name is an `invalid` error naming it rather than a silently ignored value). Each says
which roles the protocol lets send it (`senders`). Server frames may grow optional
fields; old clients ignore what they do not know.

The frame lists are written once, as the unions `AnyClientFrame` and `AnyServerFrame`;
`CLIENT_FRAMES` (type -> model) is derived from the union.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, get_args
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from protocol.svg import MAX_SVG_PATH_CHARS, check_svg_path

PROTOCOL_VERSION = 1
MAX_ID_CHARS = 128
MAX_MUTATIONS = 500
MAX_TEXT_CHARS = 8000
MAX_PULL_LIMIT = 1000
MAX_VERSION = 2**63 - 1  # versions are PostgreSQL bigints

FreeId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
# The body-map region a patient marked: length-limited and checked against the SVG path
# grammar.
SvgPath = Annotated[
    str, Field(min_length=1, max_length=MAX_SVG_PATH_CHARS), AfterValidator(check_svg_path)
]


def _storable_time(value: datetime) -> datetime:
    """In UTC (a time without a zone is UTC), as PostgreSQL stores it and Python reads it
    back: an offset under 16 hours, a year from 1 to 9999 once in UTC."""
    offset = value.utcoffset()
    if offset is not None and abs(offset) >= timedelta(hours=16):
        raise ValueError("the UTC offset must be under 16 hours")
    try:
        return value.replace(tzinfo=UTC) if offset is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must fall within the years 1 to 9999 in UTC") from None


def _json_number(value: Any) -> Any:
    """A JSON number as it came (an integer stays one), not true or "1"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


# A time a client gives for something stored.
ClientTime = Annotated[datetime, AfterValidator(_storable_time)]
AudioFormat = Literal["pcm16", "wav", "webm", "ogg", "mp3", "m4a"]
TurnDetection = Literal["manual", "server_vad"]
Role = Literal["patient", "clinician"]


class ClientText(BaseModel):
    """A model of client input whose strings may not hold NUL characters: PostgreSQL text
    cannot store them, so they are refused here, naming the field, not at the database."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class ClientPart(ClientText):
    """Anything a client sends over the socket: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PATIENTS: frozenset[Role] = frozenset({"patient"})
CLINICIANS: frozenset[Role] = frozenset({"clinician"})
EVERYONE: frozenset[Role] = PATIENTS | CLINICIANS


class ClientFrame(ClientPart):
    type: str
    # Who the protocol lets send this frame; others are answered `forbidden`.
    senders: ClassVar[frozenset[Role]] = EVERYONE


# ---- client -> server ---------------------------------------------------------------


class Auth(ClientFrame):
    """The first frame (when no Authorization header came), or later a fresh token for
    the same holder before the current one expires (answered with `ack` when it has an
    `id`)."""

    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=8192)]
    id: FreeId | None = None


class Ping(ClientFrame):
    type: Literal["ping"]
    ts: Annotated[int | float, BeforeValidator(_json_number)] | None = None


class ChatSend(ClientFrame):
    type: Literal["chat.send"]
    senders = PATIENTS
    id: FreeId
    thread_id: UUID
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    client_message_id: FreeId | None = None
    svg_path: SvgPath | None = None


class ChatCancel(ClientFrame):
    type: Literal["chat.cancel"]
    senders = PATIENTS
    id: FreeId
    response_id: UUID


class AudioStart(ClientFrame):
    type: Literal["audio.start"]
    senders = PATIENTS
    id: FreeId
    stream_id: UUID
    thread_id: UUID
    format: AudioFormat
    sample_rate: Annotated[int, Field(strict=True, ge=8000, le=48000)] | None = None
    language: Annotated[str, Field(min_length=2, max_length=16)] | None = None
    respond: bool = True
    # "server_vad": the gateway finds where speech ends and transcribes each utterance
    # (pcm16 only); "manual": one transcript at audio.commit.
    turn_detection: TurnDetection = "manual"
    silence_ms: Annotated[int, Field(strict=True, ge=100, le=10_000)] = 600

    @model_validator(mode="after")
    def _format_fits(self) -> AudioStart:
        if self.format == "pcm16" and self.sample_rate is None:
            raise ValueError("sample_rate: required for pcm16")
        if self.format != "pcm16" and self.sample_rate is not None:
            raise ValueError("sample_rate: only for pcm16 (a container says its own)")
        if self.turn_detection == "server_vad" and self.format != "pcm16":
            raise ValueError("turn_detection: server_vad needs format pcm16")
        return self


class AudioAppend(ClientFrame):
    type: Literal["audio.append"]
    senders = PATIENTS
    stream_id: UUID
    seq: Annotated[int, Field(ge=0, lt=2**32)]
    audio: Annotated[bytes, WithJsonSchema({"type": "string", "contentEncoding": "base64"})]

    @field_validator("audio", mode="before")
    @classmethod
    def _base64(cls, value: Any) -> bytes:
        if not isinstance(value, str):
            raise ValueError("must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be valid base64") from None


class AudioCommit(ClientFrame):
    type: Literal["audio.commit"]
    senders = PATIENTS
    id: FreeId
    stream_id: UUID


class AudioCancel(ClientFrame):
    type: Literal["audio.cancel"]
    senders = PATIENTS
    stream_id: UUID


Entity = Literal["thread", "message", "pain_report"]


class Mutation(ClientPart):
    """One change a device pushes. Checked one by one (protocol/mutations.py), so a bad
    mutation is rejected alone instead of failing the whole push."""

    mutation_id: FreeId
    entity: Entity
    op: Literal["upsert", "delete"]
    id: UUID
    data: dict[str, Any] | None = None


class ThreadFields(ClientPart):
    title: Annotated[str, Field(max_length=500)] = ""


class MessageFields(ClientPart):
    thread_id: UUID
    role: Literal["user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS * 4)]
    svg_path: SvgPath | None = None
    created_at: ClientTime | None = None


# How the pain feels, in the words of pain questionnaires (a fixed vocabulary, so that
# reports can be charted and exported as they are).
PainQuality = Literal[
    "burning",
    "stabbing",
    "aching",
    "throbbing",
    "shooting",
    "cramping",
    "tingling",
    "dull",
    "sharp",
]
PAIN_QUALITIES: tuple[str, ...] = get_args(PainQuality)
Intensity = Annotated[int, Field(strict=True, ge=0, le=10)]  # the numeric rating scale
Region = Annotated[str, Field(min_length=1, max_length=100)]  # "lower back"
Qualities = Annotated[list[PainQuality], Field(max_length=len(PAIN_QUALITIES))]
Note = Annotated[str, Field(max_length=2000)]


def each_once(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise ValueError("each quality at most once")
    return value


class PainReportDetails(ClientText):
    """Where, when and how it hurts: a pain report's fields besides its intensity (shared
    with the original REST route's flat items)."""

    svg_path: SvgPath | None = None
    region: Region | None = None
    qualities: Annotated[Qualities, AfterValidator(each_once)] = []
    note: Note | None = None
    onset_at: ClientTime | None = None
    recorded_at: ClientTime | None = None
    thread_id: UUID | None = None


class PainReportFields(ClientPart, PainReportDetails):
    """How much it hurts (the 0-10 numeric rating scale) and where, when, and how."""

    intensity: Intensity


class SyncPush(ClientFrame):
    type: Literal["sync.push"]
    senders = PATIENTS
    id: FreeId
    # Objects of the shape of `Mutation`, validated one by one when applied.
    mutations: Annotated[
        list[Any],
        Field(min_length=1, max_length=MAX_MUTATIONS),
        WithJsonSchema(
            {
                "type": "array",
                "items": Mutation.model_json_schema(),
                "minItems": 1,
                "maxItems": MAX_MUTATIONS,
            }
        ),
    ]


class SyncPull(ClientFrame):
    type: Literal["sync.pull"]
    id: FreeId
    since: Annotated[int, Field(strict=True, ge=0, le=MAX_VERSION)]
    patient_id: UUID | None = None
    limit: Annotated[int, Field(strict=True, ge=1, le=MAX_PULL_LIMIT)] | None = None


class Observe(ClientFrame):
    type: Literal["observe"]
    senders = CLINICIANS
    id: FreeId
    patient_id: UUID


class Unobserve(ClientFrame):
    type: Literal["unobserve"]
    senders = CLINICIANS
    id: FreeId
    patient_id: UUID


AnyClientFrame = Annotated[
    Auth
    | Ping
    | ChatSend
    | ChatCancel
    | AudioStart
    | AudioAppend
    | AudioCommit
    | AudioCancel
    | SyncPush
    | SyncPull
    | Observe
    | Unobserve,
    Field(discriminator="type"),
]


def frame_type(model: type[ClientFrame]) -> str:
    """The `type` a frame model stands for (its field's one literal value)."""
    [kind] = get_args(model.model_fields["type"].annotation)
    return str(kind)


CLIENT_FRAMES: dict[str, type[ClientFrame]] = {
    frame_type(model): model for model in get_args(get_args(AnyClientFrame)[0])
}


# ---- server -> client ---------------------------------------------------------------


class ServerPart(BaseModel):
    model_config = ConfigDict(frozen=True)


class ServerFrame(ServerPart):
    type: str


class Limits(ServerPart):
    max_frame_bytes: int
    max_audio_bytes: int
    frames_per_s: float
    burst: int
    max_mutations: int = MAX_MUTATIONS
    max_text_chars: int = MAX_TEXT_CHARS


class Providers(ServerPart):
    chat: str
    asr: str
    embeddings: str


class SessionReady(ServerFrame):
    type: Literal["session.ready"] = "session.ready"
    session_id: UUID
    protocol: int = PROTOCOL_VERSION
    role: Role
    patient_id: UUID | None = None
    device_id: str | None = None
    # The token named no device: `device_id` is this socket's own, assigned by the gateway.
    device_id_assigned: bool | None = None
    sync_version: int | None = None
    heartbeat_s: float
    limits: Limits
    providers: Providers


class Ack(ServerFrame):
    type: Literal["ack"] = "ack"
    ref: str
    # chat.send: the reply that is coming (so it can be cancelled before its first delta).
    response_id: UUID | None = None
    # chat.cancel: whether a reply was streaming and is stopped (false: it had ended).
    stopped: bool | None = None


class ErrorBody(ServerPart):
    code: str
    message: str
    ref: str | None = None
    retryable: bool = False
    patient_id: UUID | None = None  # an observation that ended: whose


class Error(ServerFrame):
    type: Literal["error"] = "error"
    error: ErrorBody


class Pong(ServerFrame):
    type: Literal["pong"] = "pong"
    ts: int | float | None = None


class ChatMessageBody(ServerPart):
    id: UUID
    role: Literal["user", "assistant"]
    content: str
    svg_path: str | None = None
    source: Literal["text", "voice", "sync"]
    created_at: datetime
    device_id: str | None = None


class ChatMessage(ServerFrame):
    type: Literal["chat.message"] = "chat.message"
    patient_id: UUID
    thread_id: UUID
    message: ChatMessageBody


class ChatDelta(ServerFrame):
    type: Literal["chat.delta"] = "chat.delta"
    patient_id: UUID
    thread_id: UUID
    response_id: UUID
    seq: int
    delta: str


class Usage(ServerPart):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class ChatDone(ServerFrame):
    type: Literal["chat.done"] = "chat.done"
    patient_id: UUID
    thread_id: UUID
    response_id: UUID
    message_id: UUID
    finish_reason: Literal["stop", "length", "cancelled", "error"]
    usage: Usage | None = None


class ChatResume(ServerFrame):
    """A reply that was streaming when the socket started watching: its text so far, up
    to and including delta `seq` (-1: none yet); live deltas continue from `seq + 1`."""

    type: Literal["chat.resume"] = "chat.resume"
    patient_id: UUID
    thread_id: UUID
    response_id: UUID
    seq: int
    text: str


class ObserveSnapshot(ServerFrame):
    """Where an observation starts: the patient's sync version, and the latest messages
    of their most recently active thread (oldest first, each as a message change's
    `data` with its `id`)."""

    type: Literal["observe.snapshot"] = "observe.snapshot"
    patient_id: UUID
    sync_version: int
    thread_id: UUID | None = None
    messages: list[dict[str, Any]] = []


class AudioTranscript(ServerFrame):
    type: Literal["audio.transcript"] = "audio.transcript"
    patient_id: UUID
    thread_id: UUID
    stream_id: UUID
    utterance: int = 0  # 0, 1, … within a server_vad stream; 0 for a manual one
    text: str
    duration_ms: int | None = None
    language: str | None = None


class AudioSpeechStarted(ServerFrame):
    type: Literal["audio.speech_started"] = "audio.speech_started"
    patient_id: UUID
    stream_id: UUID
    utterance: int
    audio_start_ms: int  # from the start of the stream's audio


class AudioSpeechStopped(ServerFrame):
    type: Literal["audio.speech_stopped"] = "audio.speech_stopped"
    patient_id: UUID
    stream_id: UUID
    utterance: int
    audio_end_ms: int


class RejectedMutation(ServerPart):
    mutation_id: str
    code: str
    message: str


class SyncAck(ServerFrame):
    type: Literal["sync.ack"] = "sync.ack"
    ref: str
    version: int
    applied: list[str]
    duplicates: list[str]
    rejected: list[RejectedMutation]


class Change(ServerPart):
    version: int
    entity: Entity
    op: Literal["upsert", "delete"]
    id: UUID
    data: dict[str, Any] | None
    device_id: str | None = None
    mutation_id: str | None = None
    at: datetime

    @model_serializer(mode="wrap")
    def _data_always_present(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # `data` is null for deletes, and says so rather than going missing.
        out: dict[str, Any] = handler(self)
        out.setdefault("data", None)
        return out


class SyncDelta(ServerFrame):
    type: Literal["sync.delta"] = "sync.delta"
    patient_id: UUID
    version: int
    changes: list[Change]


class SyncChanges(ServerFrame):
    type: Literal["sync.changes"] = "sync.changes"
    ref: str
    patient_id: UUID
    since: int
    version: int
    changes: list[Change]
    has_more: bool


class SyncVersion(ServerFrame):
    type: Literal["sync.version"] = "sync.version"
    patient_id: UUID
    version: int


class Observer(ServerPart):
    clinician_id: UUID
    since: datetime


class Presence(ServerFrame):
    type: Literal["presence"] = "presence"
    patient_id: UUID
    devices: list[str]
    observers: list[Observer]


class Reconnect(ServerFrame):
    type: Literal["reconnect"] = "reconnect"
    reason: str
    after_ms: int


AnyServerFrame = Annotated[
    SessionReady
    | Ack
    | Error
    | Pong
    | ChatMessage
    | ChatDelta
    | ChatDone
    | ChatResume
    | ObserveSnapshot
    | AudioTranscript
    | AudioSpeechStarted
    | AudioSpeechStopped
    | SyncAck
    | SyncDelta
    | SyncChanges
    | SyncVersion
    | Presence
    | Reconnect,
    Field(discriminator="type"),
]
