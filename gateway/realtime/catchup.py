"""Joining a patient's live stream part-way: frames held while a socket is caught up
(snapshot, resumes of replies in flight) and which of them it already has."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from protocol.frames import ChatResume


def not_resumed(held: list[str], resumes: Sequence[ChatResume]) -> Iterator[str]:
    """The held frames, less the `chat.delta`s the resumes' texts already hold."""
    resumed = {str(resume.response_id): resume.seq for resume in resumes}
    return (text for text in held if not _already_resumed(text, resumed))


def _already_resumed(text: str, resumed: dict[str, int]) -> bool:
    if not resumed or not text.startswith('{"type":"chat.delta"'):
        return False
    frame: dict[str, Any] = orjson.loads(text)
    seq = resumed.get(frame["response_id"])
    return seq is not None and frame["seq"] <= seq
