"""One Upsert stream read into one batch: every message checked as it arrives, what the stream holds bounded.

All messages of a stream are one transaction, so the stream is gathered before the commit, in a compact form:
each message's vectors as the one bytes object they come out of it in, ids and metadata as lists of strings, the
message itself dropped. Its payload is counted against `limits.max_upsert_mb` message by message, before the
vectors are copied out, and each message is checked against the first (one collection, one kind of input, one
embedder fingerprint, one dimension, content hashes for every item or for none) and against the collection's
dimension, so that a bad or oversized stream fails at the message at fault, not after all of it was received.
"""
from __future__ import annotations

import numpy as np

from simdex import convert
from simdex.errors import InvalidArgument
from simdex.limits import Limits
from simdex.types import UpsertChunk
from simdex.wire import as_matrix

PER_ITEM_BYTES = 8  # the field tags and lengths of one item's id, metadata and hash on the wire


class UpsertStream:
    """The messages of one stream so far. `add(msg)` checks and keeps one; `batch()` gives the whole batch.

    `collection_dim(name)` is asked once, at the first message: the collection's dim (NotFound when there is
    none), so that vectors of another dimension fail at the first message that carries them. `max_message_bytes`
    tells a vector shape a message can carry from one that lies (which the byte count check then refuses)."""

    def __init__(self, limits: Limits, collection_dim, max_message_bytes: int):
        self.limits, self._collection_dim, self._max_message = limits, collection_dim, max_message_bytes
        self.name: str | None = None
        self.dim = 0
        self.kind = ""              # "vectors", "images" or "texts"
        self.fingerprint = ""
        self.hashed: bool | None = None
        self.payload = 0            # bytes received so far
        self.ids: list[str] = []
        self.metadata: list[str] = []
        self.hashes: list[str] = []
        self.raw: list = []         # images (bytes) or texts (str)
        self._blocks: list[np.ndarray] = []  # each message's (n_i, dim) float32 vectors

    def add(self, msg, i: int) -> None:
        """Check message `i` and keep it (InvalidArgument, or ResourceExhausted over the stream's budget)."""
        where = f"upsert message {i}"
        if self.name is None:
            self.name = msg.collection
            self.dim = self._collection_dim(msg.collection)
        elif msg.collection != self.name:
            raise InvalidArgument(f"{where} names collection {msg.collection!r}, the stream began with "
                                  f"{self.name!r}; one stream writes one collection")
        self._count(self._cost(msg), where)  # before the vectors are copied out of the message
        c = convert.upsert_from_pb(msg, i)
        self._check_like_the_first(c, where)
        if c.vectors is not None:
            if self._blocks and c.vectors.shape[1] != self.dim:  # the blocks kept so far are all of self.dim
                raise InvalidArgument(f"{where}: upsert stream mixes vector dimensions "
                                      f"{sorted((self.dim, c.vectors.shape[1]))}")
            try:
                x = as_matrix(c.vectors, f"{where} vectors", self.dim, allow_empty=True)
            except InvalidArgument as exc:
                if exc.item is not None:  # the row within the message -> the item within the stream (the call)
                    exc.item += len(self.ids)
                raise
            self._blocks.append(x)
        self.raw.extend(c.images or c.texts)
        self.ids.extend(c.ids)
        self.metadata.extend(c.metadata)
        self.hashes.extend(c.content_hashes)

    def _check_like_the_first(self, c: UpsertChunk, where: str) -> None:
        """One kind of input, one embedder fingerprint, content hashes for all items or none: as the first."""
        kind = "vectors" if c.vectors is not None else "images" if c.images else "texts"
        hashed = any(c.content_hashes)
        if hashed and not all(c.content_hashes):
            raise InvalidArgument(f"{where}: content_hashes: give one for every item or for none")
        if not self.kind:
            self.kind, self.fingerprint, self.hashed = kind, c.fingerprint, hashed
        elif kind != self.kind:
            raise InvalidArgument(f"{where} carries {kind}, the stream began with {self.kind}; "
                                  "send one kind per stream")
        elif c.fingerprint != self.fingerprint:
            raise InvalidArgument(f"{where} names embedder_fingerprint {c.fingerprint!r}, the stream began with "
                                  f"{self.fingerprint!r}; send one per stream")
        elif hashed != self.hashed:
            raise InvalidArgument(f"{where}: content_hashes: give one for every item of the stream or for none")

    def _cost(self, msg) -> int:
        """The payload bytes of one message, read from its fields without copying the vectors out: their shape
        says how many bytes they hold (a shape no message could carry is left to the byte count check)."""
        size = PER_ITEM_BYTES * len(msg.ids) + sum(map(len, msg.ids)) + sum(map(len, msg.metadata))
        size += sum(map(len, msg.content_hashes)) + sum(map(len, msg.images)) + sum(map(len, msg.texts))
        if msg.HasField("vectors"):
            claimed = 4 * int(np.prod([max(0, d) for d in msg.vectors.shape], dtype=object))
            size += claimed if claimed <= self._max_message else 0
        return size + len(msg.embedder_fingerprint)

    def _count(self, size: int, where: str) -> None:
        """Add a message's payload to the stream's, refused as soon as the total passes max_upsert_mb."""
        self.payload += size
        if self.payload > self.limits.max_upsert_mb * 2**20:
            raise self.limits.refuse(
                "max_upsert_mb", f"{self.payload / 2**20:.1f} MB",
                f"upsert stream (at {where}, after {len(self.ids)} items); split the call into several, each its own "
                "transaction")

    def batch(self) -> tuple[str, UpsertChunk]:
        """(collection, every item of the stream as one UpsertChunk); InvalidArgument for a stream of no items."""
        if self.name is None or not self.ids:
            raise InvalidArgument("upsert stream carried no items")
        vectors = None
        if self.kind == "vectors":
            vectors = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
            self._blocks = []
        return self.name, UpsertChunk(
            self.ids, vectors, self.metadata, self.hashes if self.hashed else [],
            self.raw if self.kind == "images" else [], self.raw if self.kind == "texts" else [], self.fingerprint)


def read_upsert_stream(messages, limits: Limits, collection_dim, max_message_bytes: int
                       ) -> tuple[str, UpsertChunk]:
    """An Upsert stream -> (its collection, its items as one batch), every message checked as it arrives."""
    stream = UpsertStream(limits, collection_dim, max_message_bytes)
    for i, msg in enumerate(messages):
        stream.add(msg, i)
        del msg  # the message (and its arena) goes now: the stream keeps its compact copy
    return stream.batch()
