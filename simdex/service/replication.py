"""Replicas: several servers on one PostgreSQL database, each following the commits of the others.

Every write transaction announces its commit (store.notify: pg_notify inside the transaction). Each server runs one
thread that LISTENs on a connection of its own and, on each notice, catches the named collection up from the
database by sequence number (Collection.catch_up: removals, then rows, in steps under the collection's write
lock); notices of created or deleted collections open or drop them (Collections.sync). On every (re)connect and
every `interval` seconds it also catches every collection up, so a lost notice or a dropped connection costs only
latency. Its own writes are announced too and skipped by sequence number (the index is already there).

Index training and snapshots stay per server: each has its own data directory.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from simdex.errors import FailedPrecondition
from simdex.service.collections import Collections
from simdex.store.notify import Commit, Listener

LOG = logging.getLogger(__name__)
CATCH_UP_INTERVAL_S = 2.0  # the safety net: every collection caught up this often, whatever the notices said
WAIT_S = 0.25              # the longest wait for a notice: how soon close() is seen
BACKOFF_S = (0.1, 5.0)     # reconnect delays: the first, doubled up to the second


@dataclass
class Lag:
    """How far one collection's index is behind the database, as far as this server knows."""
    seq_behind: int     # the newest sequence number announced or listed, less the index's
    seconds: float      # since this server first knew of a commit its index still lacks (0 when caught up)


class Replication:
    """The follower thread of one server (start() runs it; close() stops it)."""

    def __init__(self, collections: Collections, engine: Engine, interval: float = CATCH_UP_INTERVAL_S):
        if engine.dialect.driver != "psycopg":
            raise FailedPrecondition(f"servers on PostgreSQL follow each other's commits through LISTEN/NOTIFY, "
                                     f"which simdex does with psycopg 3: use a postgresql+psycopg:// URL, not "
                                     f"{engine.dialect.name}+{engine.dialect.driver}")
        self.collections, self.engine, self.interval = collections, engine, interval
        self.listener_pid: int | None = None   # the backend of the LISTEN connection while there is one
        self.connected = threading.Event()     # set while listening (after the catch-up of each connect)
        self._newest: dict[int, tuple[int, float]] = {}  # cid -> (newest seq known, when first known behind)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replication", daemon=True)

    def start(self) -> "Replication":
        self._thread.start()
        return self

    # ---- the thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = BACKOFF_S[0]
        while not self._stop.is_set():
            listener = None
            try:
                listener = Listener(self.engine)
                self.listener_pid = listener.pid
                self.catch_up_all()  # what was committed while no notice could reach this server
                self.connected.set()
                LOG.info("replication: listening on %s (backend %d)", listener.channel, listener.pid)
                delay = BACKOFF_S[0]
                self._follow(listener)
            except Exception as exc:  # noqa: BLE001 - a lost connection or database: reconnect, never stop following
                LOG.warning("replication: %s: %s; reconnecting in %.1f s", type(exc).__name__,
                            str(exc).strip()[:300], delay)
                self.connected.clear()
                self._stop.wait(delay)
                delay = min(2 * delay, BACKOFF_S[1])
            finally:
                self.listener_pid = None
                if listener is not None:
                    listener.close()

    def _follow(self, listener: Listener) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.is_set():
            self._on(listener.wait(max(0.0, min(WAIT_S, due - time.monotonic()))))
            if time.monotonic() >= due:
                self.catch_up_all()
                due = time.monotonic() + self.interval

    def _on(self, commits: list[Commit]) -> None:
        """Act on a burst of notices: collections created or deleted first, then each collection written to
        caught up once, to the newest of its writes (or further)."""
        newest: dict[int, int] = {}
        for c in commits:
            if c.event == "write":
                newest[c.cid] = max(c.seq, newest.get(c.cid, 0))
        # a collection deleted elsewhere that is open here, or one created (or written to) elsewhere that is not;
        # this server's own creates and deletes are in step already
        if any((c.event == "delete") == (self.collections.by_id(c.cid) is not None) for c in commits):
            self.collections.sync()
        for cid, seq in newest.items():
            self._catch_up_to(cid, seq)  # this server's own writes are applied already: skipped there

    # ---- catching up -------------------------------------------------------------------------------------
    def catch_up_all(self) -> None:
        """Open and drop the collections created and deleted elsewhere, and catch up every one that is behind."""
        for rec in self.collections.sync():
            self._catch_up_to(rec.id, rec.seq)

    def _catch_up_to(self, cid: int, seq: int) -> None:
        """Catch the open collection `cid` up when it holds less than `seq`."""
        col = self.collections.by_id(cid)
        if col is not None and col.seq < seq:
            self._known(col, seq)
            self._catch_up(col)

    def _catch_up(self, col) -> None:
        present = col.catch_up()
        with self._lock:
            if not present or col.seq >= self._newest.get(col.info.id, (0, 0.0))[0]:
                self._newest.pop(col.info.id, None)
        if not present:  # deleted on another server meanwhile
            self.collections.sync()

    def _known(self, col, seq: int) -> None:
        """Note that `col` lacks the commits up to `seq`, since now or since an earlier note it still lacks."""
        with self._lock:
            old = self._newest.get(col.info.id)
            if old is None or old[0] <= col.seq:  # none, or one the index has passed since (its own write's)
                old = (0, time.monotonic())
            self._newest[col.info.id] = (max(old[0], seq), old[1])

    def lag(self, col) -> Lag:
        """How far `col` is behind the newest commit this server knows of (announced or listed)."""
        with self._lock:
            seq, since = self._newest.get(col.info.id, (0, 0.0))
        if seq <= col.seq:
            return Lag(0, 0.0)
        return Lag(seq - col.seq, time.monotonic() - since)

    def close(self) -> None:
        """Stop following (the thread sees it within WAIT_S, or after the catch-up step it is in)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
