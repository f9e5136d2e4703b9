"""The index's readers-writer lock: readers share it, a writer holds it alone, a waiting writer goes first."""
from __future__ import annotations

import threading
import time

from simdex.index.rwlock import RWLock


def _started(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_readers_share_and_a_writer_waits_for_them():
    lock, events = RWLock(), []
    inside = threading.Barrier(3, timeout=5)  # two readers and this thread: both readers are inside at once

    def reader():
        with lock.read():
            inside.wait()
            time.sleep(0.05)
            events.append("read done")

    readers = [_started(reader) for _ in range(2)]
    inside.wait()

    def writer():
        with lock.write():
            events.append("write")

    w = _started(writer)
    for t in [*readers, w]:
        t.join(5)
    assert events == ["read done", "read done", "write"]


def test_a_waiting_writer_goes_before_new_readers():
    lock, events = RWLock(), []
    holding, release = threading.Event(), threading.Event()

    def first_reader():
        with lock.read():
            holding.set()
            release.wait(5)

    r1 = _started(first_reader)
    holding.wait(5)

    def writer():
        with lock.write():
            events.append("write")

    w = _started(writer)
    while not lock._writers_waiting:  # the writer is queued behind the reader inside
        time.sleep(0.001)

    def late_reader():
        with lock.read():
            events.append("late read")

    r2 = _started(late_reader)
    time.sleep(0.05)
    assert events == []  # the late reader waits behind the queued writer
    release.set()
    for t in (r1, w, r2):
        t.join(5)
    assert events == ["write", "late read"]


def test_no_reader_ever_sees_a_write_half_done():
    lock, state, bad = RWLock(), [0, 0], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            with lock.read():
                if state[0] != state[1]:
                    bad.append(tuple(state))

    def writer():
        for i in range(2000):
            with lock.write():
                state[0] = i
                time.sleep(0)  # let a reader run now if the lock let it in
                state[1] = i

    readers = [_started(reader) for _ in range(4)]
    _started(writer).join(30)
    stop.set()
    for t in readers:
        t.join(5)
    assert not bad and state == [1999, 1999]
