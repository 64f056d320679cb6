"""Arbitrary bytes and JSON thrown at a live socket: each gets exactly one typed answer
(an error naming the problem, or the frame's reply) and the socket stays usable."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codes import ErrorCode
from protocol.frames import CLIENT_FRAMES
from tests.wsclient import patient_token, recv, send, session

ERROR_CODES = {code.value for code in ErrorCode}

scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(CLIENT_FRAMES)) | st.text(max_size=12)},
    optional={
        "id": st.text(max_size=150) | st.integers(),
        "thread_id": st.uuids().map(str) | values,
        "stream_id": st.uuids().map(str) | values,
        "text": values,
        "since": values,
        "mutations": st.lists(st.dictionaries(st.text(max_size=8), values, max_size=4), max_size=3),
        "ts": values,
    },
).map(lambda d: json.dumps(d))
payloads = st.lists(
    frames | st.text(max_size=100) | st.binary(max_size=100), min_size=1, max_size=8
)


async def exchange(ws_url: str, sent: list[str | bytes]) -> None:
    async with session(ws_url, patient_token()) as (ws, _):
        for payload in sent:
            await ws.send(payload)
            # Deltas and presence come on their own; every frame sent gets one answer.
            answer = await recv(ws, skip=("presence", "sync.delta"))
            if answer["type"] == "error":
                assert answer["error"]["code"] in ERROR_CODES
                assert answer["error"]["message"]
            else:
                assert answer["type"] in ("pong", "sync.ack", "sync.changes"), answer
        await send(ws, {"type": "ping", "ts": 42})
        assert await recv(ws, skip=("presence", "sync.delta")) == {"type": "pong", "ts": 42}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_a_live_socket_answers_everything_and_stays_usable(
    threaded_gateway: str, sent: list[str | bytes]
) -> None:
    asyncio.run(exchange(threaded_gateway, sent))
