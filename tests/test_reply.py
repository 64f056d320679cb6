"""ReplyStream: seq numbering and coalescing, with a clock the test controls."""

from __future__ import annotations

import uuid

from gateway.chat.stream import ReplyStream


def stream() -> ReplyStream:
    return ReplyStream(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), window_s=0.02)


def test_a_slow_model_is_not_held_back() -> None:
    reply = stream()
    sent = [reply.add(token, now) for token, now in [("One", 0.0), (" two", 0.1), (" three", 0.2)]]
    assert [d.delta if d else None for d in sent] == ["One", " two", " three"]
    assert [d.seq for d in sent if d] == [0, 1, 2]
    assert reply.due is None


def test_a_fast_model_is_coalesced_into_one_delta_per_window() -> None:
    reply = stream()
    first = reply.add("A", 1.000)
    assert first is not None and first.delta == "A"
    assert reply.add("b", 1.001) is None
    assert reply.add("c", 1.005) is None
    assert reply.due == 1.020  # the window after the last send
    second = reply.flush(1.020)
    assert second is not None and (second.seq, second.delta) == (1, "bc")
    assert reply.flush(1.021) is None  # nothing pending
    assert reply.text == "Abc"


def test_the_end_flushes_and_the_first_finish_reason_stays() -> None:
    reply = stream()
    reply.add("x", 0.0)
    reply.add("y", 0.001)
    reply.finish("cancelled")
    reply.finish("error")
    last = reply.flush(0.002)
    assert last is not None and (last.seq, last.delta) == (1, "y")
    assert (reply.text, reply.finish_reason) == ("xy", "cancelled")
    assert reply.add("", 5.0) is None  # empty pieces send nothing


def test_sent_is_the_text_of_the_deltas_gone_out_with_the_last_seq() -> None:
    reply = stream()
    assert reply.sent == (-1, "")
    reply.add("One", 0.0)
    reply.add(" two", 0.005)  # within the window: pending
    assert reply.sent == (0, "One")
    reply.flush(0.02)
    assert reply.sent == (1, "One two") and reply.text == "One two"
