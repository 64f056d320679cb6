"""A streamed reply's state, without I/O: seq numbering, coalescing of deltas, the text so
far and how it ended. The chat pipeline's async part only moves chunks in and frames out.

Coalescing: a fast model must not cost one broker publish per token, and a slow one must
not be held back. A token that arrives when nothing was sent for a whole window goes out
at once; tokens arriving within a window of the last send wait for that window to end
(`due`) and go out together as one delta.
"""

from __future__ import annotations

from uuid import UUID

from protocol.frames import ChatDelta


class ReplyStream:
    def __init__(
        self, patient_id: UUID, thread_id: UUID, response_id: UUID, *, window_s: float = 0.02
    ) -> None:
        self.patient_id = patient_id
        self.thread_id = thread_id
        self.response_id = response_id
        self.window_s = window_s
        self.finish_reason: str | None = None
        self._parts: list[str] = []  # everything received
        self._pending: list[str] = []  # received, not yet sent
        self._seq = 0
        self._last_sent = float("-inf")

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def sent(self) -> tuple[int, str]:
        """(the last delta's seq, -1 before any; the text of the deltas sent so far)."""
        pending = len(self._pending)
        parts = self._parts[: len(self._parts) - pending] if pending else self._parts
        return self._seq - 1, "".join(parts)

    @property
    def due(self) -> float | None:
        """When the pending text must go out (None: nothing pending)."""
        return self._last_sent + self.window_s if self._pending else None

    def add(self, text: str, now: float) -> ChatDelta | None:
        """Take a piece of the reply; a delta to send now, or None if it waits."""
        if not text:
            return None
        self._parts.append(text)
        self._pending.append(text)
        if now - self._last_sent >= self.window_s:
            return self.flush(now)
        return None

    def flush(self, now: float) -> ChatDelta | None:
        """Send what is pending (at the window's end, or when the reply ends)."""
        if not self._pending:
            return None
        delta = ChatDelta(
            patient_id=self.patient_id,
            thread_id=self.thread_id,
            response_id=self.response_id,
            seq=self._seq,
            delta="".join(self._pending),
        )
        self._pending.clear()
        self._seq += 1
        self._last_sent = now
        return delta

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
