"""protocol/ without a loop or a socket: frames, codec, audio header, schema."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import (
    ProtocolError,
    decode_audio_frame,
    decode_client_frame,
    encode,
    encode_audio_frame,
)
from protocol.codes import CloseCode, ErrorCode
from protocol.frames import (
    CLIENT_FRAMES,
    AudioAppend,
    Change,
    ChatSend,
    ClientFrame,
    SyncDelta,
    SyncPush,
)
from protocol.schema import protocol_schema


def test_a_valid_chat_send_decodes_to_its_model() -> None:
    thread = uuid.uuid4()
    raw = {"type": "chat.send", "id": "1", "thread_id": str(thread), "text": "My knee aches"}
    frame = decode_client_frame(orjson.dumps(raw))
    assert isinstance(frame, ChatSend)
    assert (frame.thread_id, frame.text, frame.svg_path) == (thread, "My knee aches", None)


def test_a_push_of_more_than_500_mutations_is_invalid() -> None:
    mutation = {"mutation_id": "m", "entity": "thread", "op": "delete", "id": str(uuid.uuid4())}
    raw = {"type": "sync.push", "id": "p", "mutations": [mutation] * 501}
    error = decode_client_frame(orjson.dumps(raw))
    assert isinstance(error, ProtocolError)
    assert (error.code, error.ref) == (ErrorCode.INVALID, "p")
    assert error.message.startswith("mutations:")
    ok = decode_client_frame(orjson.dumps({**raw, "mutations": [mutation] * 500}))
    assert isinstance(ok, SyncPush)


def test_audio_append_carries_base64_audio_as_bytes() -> None:
    stream = uuid.uuid4()
    raw = {"type": "audio.append", "stream_id": str(stream), "seq": 3}
    frame = decode_client_frame(
        orjson.dumps({**raw, "audio": base64.b64encode(b"\x01\x02").decode()})
    )
    assert isinstance(frame, AudioAppend) and frame.audio == b"\x01\x02"
    error = decode_client_frame(orjson.dumps({**raw, "audio": "***"}))
    assert isinstance(error, ProtocolError) and error.message == "audio: must be valid base64"


def test_the_binary_audio_header_round_trips() -> None:
    stream = uuid.uuid4()
    frame = decode_audio_frame(encode_audio_frame(stream, 2**32 - 1, b"pcm"))
    assert isinstance(frame, AudioAppend)
    assert (frame.stream_id, frame.seq, frame.audio) == (stream, 2**32 - 1, b"pcm")
    short = decode_audio_frame(b"\x00" * 19)
    assert isinstance(short, ProtocolError) and short.code == ErrorCode.BAD_FRAME


def test_error_messages_name_the_field_but_never_echo_the_value() -> None:
    secret = "my pain diary entry"
    raw = {"type": "chat.send", "id": "x", "thread_id": secret, "text": "hi"}
    error = decode_client_frame(orjson.dumps(raw))
    assert isinstance(error, ProtocolError)
    assert error.message.startswith("thread_id:") and secret not in error.message


def test_server_frames_leave_out_unset_optionals_but_keep_null_data() -> None:
    patient = uuid.uuid4()
    change = Change(
        version=4,
        entity="thread",
        op="delete",
        id=uuid.uuid4(),
        data=None,
        at=datetime(2026, 11, 25, tzinfo=UTC),
    )
    encoded = orjson.loads(encode(SyncDelta(patient_id=patient, version=4, changes=[change])))
    assert encoded["type"] == "sync.delta"
    assert encoded["changes"][0]["data"] is None
    assert "device_id" not in encoded["changes"][0]


def test_error_frames_carry_code_ref_and_retryable() -> None:
    error = ProtocolError(ErrorCode.BUSY, "a reply is streaming", "f9", retryable=True)
    assert orjson.loads(encode(error.frame())) == {
        "type": "error",
        "error": {
            "code": "busy",
            "message": "a reply is streaming",
            "ref": "f9",
            "retryable": True,
        },
    }


def test_close_codes_are_the_documented_numbers() -> None:
    assert [int(c) for c in CloseCode] == [1000, 1001, 1008, 1009, 1011, 1012, 1013, 4401, 4403]


def test_the_schema_lists_every_frame_type() -> None:
    schema = orjson.dumps(protocol_schema()).decode()
    for kind in [*CLIENT_FRAMES, "session.ready", "chat.delta", "sync.delta", "presence"]:
        assert f'"{kind}"' in schema


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*CLIENT_FRAMES, "nope", ""]) | st.text(max_size=8)},
    optional={
        "id": st.text(max_size=140) | st.integers(),
        "thread_id": st.uuids().map(str) | st.text(max_size=8),
        "text": st.text(max_size=30),
        "since": st.integers(),
        "mutations": st.lists(st.dictionaries(st.text(max_size=8), json_values), max_size=3),
        "token": st.text(max_size=10),
        "ts": json_values,
    },
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode) | frame_like)
def test_every_input_decodes_to_a_frame_or_a_typed_error(data: bytes) -> None:
    for decoded in (decode_client_frame(data), decode_audio_frame(data)):
        assert isinstance(decoded, ClientFrame | ProtocolError)
        if isinstance(decoded, ProtocolError):
            assert decoded.code in ErrorCode and decoded.message
            assert decoded.ref is None or len(decoded.ref) <= 128
