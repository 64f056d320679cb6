"""The prompt builder (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from gateway.chat.prompt import SYSTEM_PROMPT, Turn, build_messages
from storage.memories import Memory


def memory(text: str, day: int) -> Memory:
    return Memory(uuid.uuid4(), "user", text, datetime(2026, 11, day, tzinfo=UTC), 0.9)


def test_the_system_prompt_is_supportive_not_diagnostic_and_names_red_flags() -> None:
    lowered = " ".join(SYSTEM_PROMPT.lower().split())
    assert "do not diagnose" in lowered
    for red_flag in ("bladder or bowel control", "groin", "chest pain", "sudden weakness"):
        assert red_flag in lowered
    assert "urgent medical care" in lowered


def test_memories_come_with_their_dates_and_the_message_comes_last() -> None:
    messages = build_messages(
        "It hurts again",
        memories=[memory("Knee pain after running", 3), memory("Ice helped", 5)],
        recent=[Turn("user", "Hi"), Turn("assistant", "Hello!")],
        svg_path="M10 10 L20 20 Z",
    )
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "user"]
    assert "(2026-11-03) Knee pain after running" in messages[1]["content"]
    assert "(2026-11-05) Ice helped" in messages[1]["content"]
    assert messages[-1]["content"].startswith("It hurts again")
    assert "M10 10 L20 20 Z" in messages[-1]["content"]


def test_the_oldest_turns_are_dropped_to_fit_the_budget() -> None:
    recent = [Turn("user", f"turn {n} " + "x" * 400) for n in range(50)]
    messages = build_messages("now", recent=recent, budget_tokens=1000)
    kept = [m["content"] for m in messages if m["content"].startswith("turn ")]
    assert kept and kept[-1].startswith("turn 49")  # the newest survive
    assert not any(k.startswith("turn 0 ") for k in kept)
    assert sum(len(m["content"]) for m in messages) <= 1000 * 4
