"""The replicas' catch-up gauges of /metrics (server/metrics.py over service/replication.py)."""
from __future__ import annotations

import time

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from simdex.server.metrics import Metrics
from simdex.service.facade import Simdex


def gauges(metrics: Metrics, collection: str) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in ("simdex_replica_lag_seconds", "simdex_catchup_seq_behind")
            and s.labels.get("collection") == collection}


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_replica_reports_how_far_it_is_behind_and_then_zero(tmp_path, pg_url):
    a = Simdex(tmp_path / "a", pg_url, snapshot_interval=0)
    b = Simdex(tmp_path / "b", pg_url, snapshot_interval=0)
    metrics = Metrics()
    metrics.watch(b)
    try:
        a.create_collection("c", 4)
        wait_for(lambda: "c" in [c.name for c in b.list_collections()])
        assert gauges(metrics, "c") == {"simdex_replica_lag_seconds": 0.0, "simdex_catchup_seq_behind": 0.0}
        col = b.collections.get("c")
        with col.write_lock:  # b's catch-up waits here
            a.upsert("c", ["x", "y"], np.eye(4, dtype=np.float32)[:2])
            wait_for(lambda: gauges(metrics, "c")["simdex_catchup_seq_behind"] == 1)
            time.sleep(0.05)
            assert gauges(metrics, "c")["simdex_replica_lag_seconds"] >= 0.05
        wait_for(lambda: gauges(metrics, "c") == {"simdex_replica_lag_seconds": 0.0,
                                                  "simdex_catchup_seq_behind": 0.0})
    finally:
        a.close()
        b.close()


def test_a_server_on_sqlite_has_no_replica_gauges(tmp_path):
    s = Simdex(tmp_path / "d", snapshot_interval=0)
    metrics = Metrics()
    metrics.watch(s)
    try:
        s.create_collection("c", 4)
        assert gauges(metrics, "c") == {}
    finally:
        s.close()
