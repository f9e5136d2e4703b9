"""A readers-writer lock: searches share the index, writes to it are exclusive (writers go first).

Every search takes the read side, so it is kept cheap: `read()` and `write()` return reusable context managers
(no generator per call), the mutex is taken in C (`with lock:`), and a reader leaving wakes only a waiting writer.
"""
from __future__ import annotations

import threading


class RWLock:
    def __init__(self):
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read, self._write = _Read(self), _Write(self)

    def read(self) -> "_Read":
        """`with lock.read():` shares the lock with other readers; waits while a writer holds or wants it."""
        return self._read

    def write(self) -> "_Write":
        """`with lock.write():` holds the lock alone, once the readers inside have left."""
        return self._write


class _Side:
    """One side of an RWLock, reused by every `with`."""
    __slots__ = ("_rw",)

    def __init__(self, rw: RWLock):
        self._rw = rw


class _Read(_Side):
    __slots__ = ()

    def __enter__(self) -> None:
        rw = self._rw
        with rw._mutex:
            while rw._writer or rw._writers_waiting:
                rw._cond.wait()
            rw._readers += 1

    def __exit__(self, *exc) -> None:
        rw = self._rw
        with rw._mutex:
            rw._readers -= 1
            if not rw._readers and rw._writers_waiting:  # only writers ever wait for readers to leave
                rw._cond.notify_all()


class _Write(_Side):
    __slots__ = ()

    def __enter__(self) -> None:
        rw = self._rw
        with rw._mutex:
            rw._writers_waiting += 1
            while rw._writer or rw._readers:
                rw._cond.wait()
            rw._writers_waiting -= 1
            rw._writer = True

    def __exit__(self, *exc) -> None:
        rw = self._rw
        with rw._mutex:
            rw._writer = False
            rw._cond.notify_all()
