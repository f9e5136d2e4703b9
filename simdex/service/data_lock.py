"""One process per data directory and per SQLite file: an OS lock, held from the service's start to its close.

SQLite serves one process (each process would keep its own index, deaf to the other's writes), and a data directory
holds one server's index snapshots whatever the database. The lock is flock(2) on a lock file: exclusive, tied to
this open file (so a second service on the same directory is refused in this process too), and released by the OS
when the process ends, kill -9 included: a crash never leaves a stale lock behind. The file keeps the holder's pid
for the message.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from simdex.errors import FailedPrecondition

LOCK_FILE = "simdex.lock"


class DataLock:
    """The locks of one service: its data directory's, and its SQLite file's when that lies elsewhere."""

    def __init__(self, data_dir: Path, sqlite_file: str | None):
        """`sqlite_file`: the database's path when it is a SQLite file (None for PostgreSQL or in-memory)."""
        data_dir = data_dir.resolve()
        db = Path(sqlite_file).resolve() if sqlite_file else None
        # (lock file, the SQLite database it guards or None): an error names what is really in use
        locks = [(data_dir / LOCK_FILE, db if db is not None and db.parent == data_dir else None)]
        if db is not None and db.parent != data_dir:
            locks.append((db.with_name(db.name + ".lock"), db))
        self._fds: list[int] = []
        try:
            for path, guarded in locks:
                self._fds.append(_take(path, guarded))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the locks (closing the only descriptor of each lock file does)."""
        while self._fds:
            os.close(self._fds.pop())


def _take(path: Path, db: Path | None) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if db is not None:
            raise FailedPrecondition(
                f"the SQLite database {db} is in use by another simdex process (pid {holder}, lock {path}): SQLite "
                "serves one process. Stop that one, or run several servers on one PostgreSQL database "
                "(--db postgresql+psycopg://...), each with a data directory of its own") from None
        raise FailedPrecondition(
            f"the data directory {path.parent} is in use by another simdex process (pid {holder}, lock {path}): "
            "each server needs a data directory of its own (its index snapshots), also when several share one "
            "PostgreSQL database") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
