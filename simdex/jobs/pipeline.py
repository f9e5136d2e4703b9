"""What the indexing pipelines (local_embed, remote_embed, and the vector upload in indexer) share: the job they
work through (`Job`, which `simdex.jobs.indexer.Indexer` implements), the background uploader of chunks, and the
error report."""
from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator, Protocol


class Job(Protocol):
    """One indexing run as a pipeline sees it: the client, the options, the summary being filled, an optional
    embedder given by the caller, and the run's steps."""

    c: object        # a simdex Client (remote or in-process)
    o: object        # IndexOptions
    s: object        # Summary
    embedder: object | None

    def collection(self, dim: int = 0): ...

    def todo(self, items: list, keep_bytes: bool) -> Iterator: ...

    def start_progress(self, total: int, unit: str) -> None: ...

    def advance(self, inputs: int, indexed: int = 0, skipped: int = 0) -> None: ...

    def fail(self, id_: str, path: str, reason: str) -> None: ...

    def send_vectors(self, chunk: tuple, fingerprint: str) -> None: ...


class ErrorReport:
    """Failed inputs as JSON lines {"id", "path", "reason"}, flushed as they happen (a killed run keeps its
    report). Truncated at the start of each run; removed at the end when the run had no failures."""

    def __init__(self, path: Path, on_error: Callable[[dict], None]):
        self.path, self.on_error, self.count = path, on_error, 0
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def add(self, id_: str, path: str, reason: str) -> None:
        row = {"id": id_, "path": path, "reason": reason}
        with self._lock:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._fh.flush()
            self.count += 1
        self.on_error(row)

    def close(self) -> None:
        self._fh.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)


class Uploader:
    """Upserts chunks in `n` background threads (bounded queue: the producer waits when they fall behind).
    The first error stops the run: it is raised from the next put() or from close()."""

    def __init__(self, send: Callable[[tuple], None], n: int = 1):
        self._send, self._q = send, queue.Queue(maxsize=max(1, n))
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._loop, name=f"simdex-upload-{i}", daemon=True)
                         for i in range(max(1, n))]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        while (chunk := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._send(chunk)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    self._error = e

    def put(self, chunk: tuple) -> None:
        self._raise()
        self._q.put(chunk)

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
