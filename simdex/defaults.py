"""One place for each default that several parts of simdex share (server, service, both client transports, CLI).

Import-light on purpose: the SDK reads these without the server extra.
"""
from __future__ import annotations

import os

# gRPC messages: the server's receive limit and the size the client splits requests to fit.
MAX_MESSAGE_MB = 64
# A Client's small searches in flight at once, per server of its target; further concurrent ones wait and go
# together (clients.coalesce).
CLIENT_SEARCH_SLOTS = 2
# Each slot sends its searches over a SearchStream (one call for many searches), half-closed after this many idle
# seconds, since an open stream holds a server thread.
CLIENT_STREAM_IDLE_S = 1.0
# SearchStream calls a server keeps open at once (simdex serve --search-streams); its thread pool has this many
# threads more than its workers, so that open streams never take a thread from other calls. 0: none (Search only).
SEARCH_STREAMS = 8
# A SearchStream that waits this many seconds for its next request is cancelled (simdex serve --stream-idle-s;
# 0: never), so that streams opened and left idle cannot hold every place. The Python client half-closes its own
# idle streams after CLIENT_STREAM_IDLE_S.
SERVER_STREAM_IDLE_S = 30.0
# The lookup web page's largest upload (simdex web --max-upload-mb; 413 above).
MAX_UPLOAD_MB = 64.0

# Mean shift (the Cluster RPC): absent request fields take these.
CLUSTER_KERNEL = "flat"
CLUSTER_MAX_ITER = 300
CLUSTER_MAX_SEEDS = 1000            # seeds sampled when bin_seeding is off; 0/None seeds from every point
CLUSTER_MIN_BIN_FREQ = 1
CLUSTER_REPRESENTATIVES = 5         # member ids returned per cluster, nearest the centre first

# Linear heads (the TrainHead RPC).
HEAD_KIND = "logistic"
HEAD_TEST_FRACTION = 0.2            # held out, stratified, seeded

# Snapshots of the FAISS indexes, seconds between checks for changed collections.
SNAPSHOT_INTERVAL_S = 30.0
# Each snapshot pass also prunes a collection's removed-items log (the ids its deletes and replacements removed,
# which replicas on one PostgreSQL database catch up from) to the removals of its newest this many writes; a
# replica further behind compares its index with the live rows instead (store.items.Store.prune_removals).
REMOVALS_KEPT_WRITES = 10_000


def quiet_openmp() -> None:
    """Make OpenMP threads sleep instead of spinning while idle. Call before torch or faiss is imported: on a few
    cores shared by gRPC threads, torch and faiss, the default busy-wait slows torch 10-100x (measured)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
