"""A stream's audio: in memory while small, then in a private temporary file.

The file lives in the process's spool directory (mode 0700, the file 0600) and is
deleted when the spool is closed: audio is never kept after its transcript is made.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO


def private_directory(parent: Path | None = None) -> Path:
    """A new directory only this user can read (for one process's spools)."""
    return Path(tempfile.mkdtemp(prefix="painar-audio-", dir=parent))


class Spool:
    def __init__(self, directory: Path, memory_limit: int) -> None:
        self._directory = directory
        self._memory_limit = memory_limit
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        if self._file is None and self.size + len(data) > self._memory_limit:
            self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed by close())
                dir=self._directory, prefix="stream-", suffix=".audio"
            )
            os.fchmod(self._file.fileno(), 0o600)
            self._file.write(self._memory)
            self._memory = bytearray()
        if self._file is not None:
            self._file.write(data)
        else:
            self._memory += data
        self.size += len(data)

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of what was written."""
        end = self.size if end is None else min(end, self.size)
        if start >= end:
            return b""
        if self._file is None:
            return bytes(self._memory[start:end])
        self._file.flush()
        self._file.seek(start)
        data = self._file.read(end - start)
        self._file.seek(0, os.SEEK_END)
        return data

    def close(self) -> None:
        """Forget the audio (the file, if any, is deleted)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = bytearray()
