"""The gRPC transport of `Client`: each method is one RPC, its messages made and read by `simdex.convert`.

One channel per transport, to one server or several (simdex.clients.targets: round_robin, gRPC's retries of the
calls that store nothing). Writes are retried here, and only when a repeat is provably safe:
- an Upsert that failed UNAVAILABLE while its stream was still being sent: the server commits a stream only after
  its end (the client's half-close), which it never saw, so nothing was stored. Once the whole stream went out the
  server may have committed it just before it failed (kill -9 between the commit and the answer): that Upsert is
  not repeated, and its error says so. Sending the same call again is then the caller's choice; it stores the
  same rows (an Upsert replaces by id, the content hash is of the same vector and metadata), unless another
  writer changed those ids in between, whose write a repeat would undo.
- a Delete with ignore_missing, on UNAVAILABLE at any point: deleting again leaves the same items; the count it
  returns is that of the attempt that answered (0 for ids an earlier, unanswered attempt deleted). Without
  ignore_missing a repeat of a committed Delete would fail NotFound, so it is not repeated.
gRPC itself repeats any call that never reached a server (its transparent retry).
"""
from __future__ import annotations

import logging
import time
from operator import attrgetter
from typing import Sequence

import grpc

from simdex import convert, defaults
from simdex.clients import targets
from simdex.clients.backup_files import receive
from simdex.clients.coalesce import SearchCoalescer, stackable
from simdex.clients.search_stream import SearchStreams, StreamLost
from simdex.errors import InvalidArgument, Unavailable
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.types import SearchParams

LOG = logging.getLogger(__name__)
NOT_REPEATED = ("not retried: the whole stream had been sent, so the server may have stored it before it failed; "
                "sending the same Upsert again stores the same items")


def status_error(exc: grpc.RpcError):
    """A failed RPC -> the SimdexError of its status, `item` restored from the trailing metadata."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ()
    return convert.error_from_status(exc.code().name, exc.details() or str(exc.code()), trailing)


def next_pause(exc: Unavailable, refusal, pauses) -> float:
    """After `exc` failed a repeatable call: the pause before the next attempt; raises `refusal(exc)` when that
    gives an error (a repeat is not safe), or `exc` when the pauses ran out."""
    if (final := refusal(exc)) is not None:
        raise final from None
    if (pause := next(pauses, None)) is None:
        raise exc
    LOG.info("repeating a call that failed where a repeat is safe: %s", exc.message)
    return pause


class RemoteTransport:
    """A channel to a simdex server. Errors arrive as the SimdexError of their status, `item` restored.

    Each method builds its request and hands `_call` the reader of the answer, so the asyncio transport
    (simdex.clients.async_remote) shares every method and only makes the channel and the call differently."""

    in_process = False
    embedder_pool = None
    channels = grpc  # makes the channel: grpc here, grpc.aio for the asyncio transport
    coalesces = True  # stacks concurrent small searches (simdex.clients.coalesce); not the asyncio transport

    def __init__(self, target: str | Sequence[str] = "127.0.0.1:50051", token: str | None = None, *,
                 tls: bool = False, root_certificates: bytes | None = None,
                 max_message_mb: float = defaults.MAX_MESSAGE_MB, timeout: float | None = None,
                 search_slots: int | None = None):
        self.target = targets.parse(target)
        # By default CLIENT_SEARCH_SLOTS per server of a list, so that stacking never leaves a replica idle.
        if not self.coalesces and search_slots:
            raise InvalidArgument("search_slots: the asyncio client does not stack searches (asyncio.gather them)")
        if search_slots is None:
            search_slots = defaults.CLIENT_SEARCH_SLOTS * targets.servers(self.target)
        self._coalescer = SearchCoalescer(self._stacked, search_slots) if search_slots and self.coalesces else None
        self.max_message_bytes = int(max_message_mb * 1024 * 1024)
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.max_send_message_length", -1),  # the server decides what is too large
                   ("grpc.service_config", targets.service_config()),
                   ("grpc.enable_retries", 1),
                   # a request is kept for its retries up to this size (gRPC's default, 256 KiB, would leave a
                   # search of many queries unretried); the client splits requests under it
                   ("grpc.per_rpc_retry_buffer_size", self.max_message_bytes)]
        if self.target.authority:
            options.append(("grpc.default_authority", self.target.authority))
        if tls or root_certificates:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            if token:
                creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
            self.channel = self.channels.secure_channel(self.target.uri, creds, options=options)
            self._md = None
        else:
            self.channel = self.channels.insecure_channel(self.target.uri, options=options)
            self._md = (("authorization", f"Bearer {token}"),) if token else None
        self.stub = pb_grpc.SimdexStub(self.channel)
        # The coalescer's calls go over SearchStreams (not with a per-call timeout: a stream's answer has none)
        self._streams = (SearchStreams(lambda requests: self.stub.SearchStream(requests, metadata=self._md),
                                       defaults.CLIENT_STREAM_IDLE_S, search_slots)
                         if self._coalescer is not None and timeout is None else None)

    def close(self) -> None:
        if self._streams is not None:
            self._streams.close()
        self.channel.close()

    def _call(self, method, request, read=None):
        """Make the RPC; `read(answer)` (None without a reader)."""
        try:
            answer = method(request, timeout=self.timeout, metadata=self._md)
        except grpc.RpcError as exc:
            raise status_error(exc) from None
        return read(answer) if read else None

    def _retried(self, attempt, refusal):
        """`attempt()`; made again, after gRPC's backoff, while it fails with Unavailable and `refusal(error)` is
        None: a repeat is safe (see the module's docstring); else the error `refusal` gives is raised."""
        pauses = targets.retry_pauses()
        while True:
            try:
                return attempt()
            except Unavailable as exc:
                pause = next_pause(exc, refusal, pauses)
            time.sleep(pause)

    # ---- collections -------------------------------------------------------------------------------------
    def create_collection(self, name, dim, metric, index, embedder):
        return self._call(self.stub.CreateCollection, pb.CreateCollectionRequest(
            name=name, dim=dim, metric=metric, index=index, embedder=embedder), convert.collection_from_pb)

    def get_collection(self, name):
        return self._call(self.stub.GetCollection, pb.GetCollectionRequest(name=name), convert.collection_from_pb)

    def list_collections(self):
        return self._call(self.stub.ListCollections, pb.ListCollectionsRequest(),
                          lambda r: [convert.collection_from_pb(c) for c in r.collections])

    def delete_collection(self, name):
        return self._call(self.stub.DeleteCollection, pb.DeleteCollectionRequest(name=name))

    # ---- items -------------------------------------------------------------------------------------------
    def upsert(self, name, chunks):
        """One stream of `chunks`; repeated while it failed before its end was sent (nothing stored)."""
        chunks = chunks if isinstance(chunks, list) else list(chunks)
        sent: list[UpsertMessages] = []

        def attempt():
            sent.append(UpsertMessages(name, chunks))
            return self._call(self.stub.Upsert, iter(sent[-1]), attrgetter("upserted"))

        def refusal(exc):
            return Unavailable(f"Upsert: {exc.message}; {NOT_REPEATED}") if sent[-1].ended else None

        return self._retried(attempt, refusal)

    def delete(self, name, ids, ignore_missing):
        """Repeated on UNAVAILABLE with ignore_missing only (the module's docstring says why)."""
        req = pb.DeleteRequest(collection=name, ids=ids, ignore_missing=ignore_missing)
        call = lambda: self._call(self.stub.Delete, req, attrgetter("deleted"))  # noqa: E731
        return self._retried(call, lambda exc: None) if ignore_missing else call()

    def get(self, name, ids, with_vectors, ignore_missing):
        return self._call(self.stub.Get, pb.GetRequest(collection=name, ids=ids, omit_vectors=not with_vectors,
                                                       ignore_missing=ignore_missing),
                          lambda r: convert.items_from_pb(r, with_vectors))

    def count(self, name, filter):  # noqa: A002
        return self._call(self.stub.Count, pb.CountRequest(collection=name, filter=filter), attrgetter("count"))

    def search(self, name, queries, k, *, radius=None, filter="", params=SearchParams(),  # noqa: A002
               include_metadata=False, page_size=0, page_token="", head="", images=(), texts=()):
        kw = dict(radius=radius, filter=filter, params=params, include_metadata=include_metadata,
                  page_size=page_size, page_token=page_token, head=head, images=images, texts=texts)
        if self._coalescer is not None and stackable(queries, k, **kw):
            return self._coalescer.search((name, k, queries.shape[1], filter, params, head), queries)
        return self._search_call(name, queries, k, **kw)

    def _search_call(self, name, queries, k, **kw):
        req = convert.search_request_to_pb(name, queries, k, **kw)
        return self._call(self.stub.Search, req,
                          lambda r: convert.search_response_from_pb(r, kw.get("include_metadata", False)))

    def _stacked(self, key, queries):
        """One search of the coalescer (the rows of the searches of several callers with equal `key`): over a
        SearchStream, or a Search call when there is none to be had (simdex.clients.search_stream)."""
        name, k, _, filter, params, head = key  # noqa: A001
        req = convert.search_request_to_pb(name, queries, k, filter=filter, params=params, head=head)
        if self._streams is not None and self._streams.usable():
            try:
                return convert.search_response_from_pb(self._streams.send(req), False)
            except StreamLost as exc:
                LOG.debug("search sent as a Search call: %s", exc)
            except grpc.RpcError as exc:
                raise status_error(exc) from None
        return self._call(self.stub.Search, req, lambda r: convert.search_response_from_pb(r, False))

    def cluster(self, name, spec, page_size, page_token):
        req = convert.cluster_request_to_pb(name, spec, page_size, page_token)
        return self._call(self.stub.Cluster, req, convert.cluster_response_from_pb)

    # ---- heads -------------------------------------------------------------------------------------------
    def train_head(self, spec):
        return self._call(self.stub.TrainHead, convert.head_spec_to_pb(spec), convert.head_from_pb)

    def get_head(self, name):
        return self._call(self.stub.GetHead, pb.GetHeadRequest(name=name), convert.head_from_pb)

    def list_heads(self, collection):
        return self._call(self.stub.ListHeads, pb.ListHeadsRequest(collection=collection),
                          lambda r: [convert.head_from_pb(h) for h in r.heads])

    def delete_head(self, name):
        return self._call(self.stub.DeleteHead, pb.DeleteHeadRequest(name=name), attrgetter("versions"))

    def predict(self, head, ids, vectors, images, texts):
        req = convert.predict_request_to_pb(head, ids, vectors, images, texts)
        return self._call(self.stub.Predict, req, convert.prediction_from_pb)

    # ---- embedders and the translator ---------------------------------------------------------------------
    def list_embedders(self):
        return self._call(self.stub.ListEmbedders, pb.ListEmbeddersRequest(),
                          lambda r: [convert.embedder_from_pb(e) for e in r.embedders])

    def embed(self, embedder, images, texts, all_frames):
        req = pb.EmbedRequest(embedder=embedder, images=images, texts=texts, all_frames=all_frames)
        return self._call(self.stub.Embed, req, convert.embedding_from_pb)

    def translate(self, model, texts, beam, max_len):
        return self._call(self.stub.Translate,
                          pb.TranslateRequest(model=model, texts=texts, beam=beam, max_len=max_len),
                          lambda r: list(zip(r.translations, r.scores)))

    # ---- operations --------------------------------------------------------------------------------------
    def backup(self, out):
        """The Backup RPC's stream written to the new folder `out` (clients.backup_files); returns its manifest."""
        def pieces():
            return ((c.path, c.data) for c in self.stub.Backup(pb.BackupRequest(), timeout=self.timeout,
                                                                metadata=self._md))
        try:
            return receive(pieces, out)
        except grpc.RpcError as exc:
            raise status_error(exc) from None


class UpsertMessages:
    """The messages of one Upsert attempt, made as gRPC asks for them. `ended` turns True when gRPC asks past the
    last one: only then can it send the stream's end (the half-close) after which the server may commit."""

    def __init__(self, name: str, chunks: list):
        self.name, self.chunks, self.ended = name, chunks, False

    def __iter__(self):
        for c in self.chunks:
            yield convert.upsert_to_pb(self.name, c)
        self.ended = True
