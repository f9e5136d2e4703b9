"""Snapshots of the collections' FAISS indexes: a daemon thread writes the changed ones every `interval` seconds,
and close() writes them a last time, after that thread has stopped (so no two writers share a file)."""
from __future__ import annotations

import logging
import threading

from simdex.service.collections import Collections

LOG = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 10


class Snapshots:
    def __init__(self, collections: Collections, interval: float):
        """`interval` <= 0: no thread; snapshots are written by snapshot() and close() only."""
        self.collections = collections
        self._stop = threading.Event()
        self._thread = None
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, args=(interval,), name="snapshotter", daemon=True)
            self._thread.start()

    def snapshot(self, prune: bool = True) -> int:
        """Snapshot every collection that changed, and (with `prune`) prune its removed-items log
        (Collection.prune_removals). Returns how many files were written."""
        written = 0
        for col in self.collections.all():
            try:
                written += col.save_snapshot()
            except OSError as exc:  # a full disk must not stop the service: the database still holds everything
                LOG.warning("snapshot of %s failed: %s", col.name, exc)
            if prune:
                try:
                    col.prune_removals()
                except Exception:  # noqa: BLE001 - the thread goes on (a database away for a while): next pass
                    LOG.exception("pruning the removed-items log of %s failed", col.name)
        return written

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.snapshot()

    def close(self) -> None:
        """Stop the thread, then write the last snapshots (no pruning: a stop does not wait for it)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=JOIN_TIMEOUT_S)
        self.snapshot(prune=False)
