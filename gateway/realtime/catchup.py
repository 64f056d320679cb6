"""Joining a patient's live stream part-way: frames held while a socket is caught up
(snapshot, resumes of replies in flight) and which of them it already has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from protocol.frames import ChatResume


def resumed_through(resumes: Sequence[ChatResume]) -> dict[str, int]:
    """The last delta each resume's text includes, by response id."""
    return {str(resume.response_id): resume.seq for resume in resumes}


def already_resumed(text: str, resumed: dict[str, int]) -> bool:
    """Whether an encoded frame is a `chat.delta` a resume's text already holds."""
    if not resumed or not text.startswith('{"type":"chat.delta"'):
        return False
    frame: dict[str, Any] = orjson.loads(text)
    seq = resumed.get(frame["response_id"])
    return seq is not None and frame["seq"] <= seq
