"""Targets of several servers (simdex.clients.targets): parsing, resolving host names once, the service config,
and what the channel does with it against real in-process gRPC servers: calls spread by round_robin, reads retried
on UNAVAILABLE, writes only where a repeat is safe (the Upsert cases need kill -9: tests/e2e/test_multi_target.py).
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
from collections import Counter
from concurrent import futures

import grpc
import numpy as np
import pytest

from conftest import BlockingAsyncClient, InProcessServer
from simdex.clients import Client, InvalidArgument, Unavailable, targets
from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server.metrics import Metrics

WRITES = {"CreateCollection", "DeleteCollection", "Upsert", "Delete", "TrainHead", "DeleteHead"}


# ---- parsing and resolving --------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["127.0.0.1:50051", "db.example:50051", "dns:///db.example:50051",
                                    "ipv4:10.0.0.1:1,10.0.0.2:2", "ipv6:[::1]:1,[::1]:2", "unix:/tmp/s.sock"])
def test_a_single_target_or_uri_goes_to_grpc_as_it_is(target):
    assert targets.parse(target) == targets.Target(target, None)


def test_a_list_of_addresses_becomes_one_ipv4_target_list():
    t = targets.parse(["10.0.0.1:50051", "10.0.0.2:50052", "10.0.0.1:50051"])
    assert t == targets.Target("ipv4:10.0.0.1:50051,10.0.0.2:50052", "10.0.0.1:50051")  # each address once


def test_a_comma_separated_string_is_a_list():
    assert targets.parse(" 10.0.0.1:1 ,10.0.0.2:2") == targets.parse(["10.0.0.1:1", "10.0.0.2:2"])


def test_ipv6_addresses_become_an_ipv6_target_list():
    assert targets.parse(["[::1]:1", "[fe80::2]:2"]).uri == "ipv6:[::1]:1,[fe80::2]:2"


def test_host_names_are_resolved_once_into_every_address(monkeypatch):
    asked = Counter()
    table = {"replica-a": ["10.1.0.1", "10.1.0.2"], "replica-b": ["10.1.0.3"]}

    def getaddrinfo(host, port, family=0, type=0, *args):  # noqa: A002
        asked[host] += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    t = targets.parse(["replica-a:7000", "replica-b:7001"])
    assert t == targets.Target("ipv4:10.1.0.1:7000,10.1.0.2:7000,10.1.0.3:7001", "replica-a:7000")
    assert asked == {"replica-a": 1, "replica-b": 1}


def test_localhost_resolves_to_its_ipv4_address():
    assert targets.parse(["localhost:5"]).uri == "ipv4:127.0.0.1:5"


def test_a_host_that_does_not_resolve_is_named():
    with pytest.raises(InvalidArgument, match=r"'no-such-host\.invalid:50051'.*does not resolve"):
        targets.parse(["127.0.0.1:50051", "no-such-host.invalid:50051"])


@pytest.mark.parametrize("entry", ["db.example", "db.example:0", "db.example:65536", "db.example:port", "::1:50051",
                                   "[::1]", ":50051"])
def test_an_entry_that_is_not_host_port_is_refused(entry):
    with pytest.raises(InvalidArgument, match=re.escape(f"target {entry!r}: give host:port")):
        targets.parse(["10.0.0.1:1", entry])


@pytest.mark.parametrize("target", [[], ["10.0.0.1:1", ""], "10.0.0.1:1,"])
def test_an_empty_list_or_entry_is_refused(target):
    with pytest.raises(InvalidArgument, match="no server or an empty entry"):
        targets.parse(target)


def test_servers_of_no_common_address_family_are_refused():
    with pytest.raises(InvalidArgument, match=r"'10\.0\.0\.1:1' has only IPv4.*'\[::1\]:2' only IPv6"):
        targets.parse(["10.0.0.1:1", "[::1]:2"])


def test_client_refuses_a_bad_target_list_before_connecting():
    with pytest.raises(InvalidArgument, match="give host:port"):
        Client(["127.0.0.1:1", "nowhere"])


# ---- the service config -----------------------------------------------------------------------------------------

def test_service_config_balances_round_robin():
    assert json.loads(targets.service_config())["loadBalancingConfig"] == [{"round_robin": {}}]


def test_service_config_retries_every_method_that_stores_nothing_and_no_write():
    (method_config,) = json.loads(targets.service_config())["methodConfig"]
    named = {n["method"] for n in method_config["name"]}
    assert {n["service"] for n in method_config["name"]} == {"simdex.v1.Simdex"}
    every = {m.name for m in pb.DESCRIPTOR.services_by_name["Simdex"].methods}
    assert named == every - WRITES  # a new RPC must be placed on one side or the other
    assert WRITES <= every


def test_service_config_retries_on_unavailable_within_grpcs_limits():
    (method_config,) = json.loads(targets.service_config())["methodConfig"]
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 2 <= policy["maxAttempts"] <= 5  # gRPC caps attempts at 5
    assert policy["initialBackoff"] == f"{targets.INITIAL_BACKOFF_S}s"
    assert policy["maxBackoff"] == f"{targets.MAX_BACKOFF_S}s"


def test_retry_pauses_follow_the_policys_backoff():
    for _ in range(50):
        pauses = list(targets.retry_pauses())
        assert len(pauses) == targets.MAX_ATTEMPTS - 1
        caps = [min(targets.INITIAL_BACKOFF_S * targets.BACKOFF_MULTIPLIER ** n, targets.MAX_BACKOFF_S)
                for n in range(len(pauses))]
        assert all(0 <= p <= c for p, c in zip(pauses, caps))


# ---- on real servers --------------------------------------------------------------------------------------------

def answered(metrics: Metrics, method: str) -> float:
    return metrics.registry.get_sample_value(
        "simdex_rpc_requests_total", {"service": "simdex.v1.Simdex", "method": method, "code": "OK"}) or 0.0


@pytest.fixture
def pair(tmp_path):
    """Two real servers with the same collection, each counting its RPCs."""
    servers = []
    for name in "ab":
        metrics = Metrics()
        srv = InProcessServer(tmp_path / name, metrics=metrics)
        srv.metrics = metrics
        with Client(srv.target) as c:
            c.create_collection("s", 4)
            c.upsert("s", ["x"], np.ones((1, 4), np.float32))
        servers.append(srv)
    yield servers
    for srv in servers:
        srv.stop()


@pytest.mark.parametrize("make", [Client, BlockingAsyncClient.connect], ids=["client", "async"])
def test_calls_spread_over_every_server_of_the_list(pair, make):
    c = make([srv.target for srv in pair])
    try:
        for _ in range(200):  # until both connections are up (until then the first one up takes every call)
            c.count("s")
            if all(answered(srv.metrics, "Count") for srv in pair):
                break
        before = [answered(srv.metrics, "Count") for srv in pair]
        for _ in range(20):
            assert c.count("s") == 1
    finally:
        c.close()
    counts = [answered(srv.metrics, "Count") - b for srv, b in zip(pair, before)]
    assert counts == [10, 10], counts  # round_robin takes them in turn


def test_a_dns_target_follows_the_name(pair):
    with Client(f"dns:///localhost:{pair[0].port}") as c:
        assert c.count("s") == 1
    assert answered(pair[0].metrics, "Count") == 1


def test_a_resolved_name_keeps_it_for_tls(tmp_path):
    """Names resolved to addresses still check the server's certificate against the name (the channel's
    authority), here a certificate that names localhost and no address."""
    from simdex.server.app import Tls

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True, timeout=60)
    srv = InProcessServer(tmp_path / "d", tls=Tls(cert.read_bytes(), key.read_bytes()))
    try:
        with Client([f"localhost:{srv.port}"], tls=True, root_certificates=cert.read_bytes(), timeout=10) as c:
            assert c.list_collections() == []
        with Client([f"127.0.0.1:{srv.port}"], tls=True, root_certificates=cert.read_bytes(), timeout=10) as c:
            with pytest.raises(Unavailable):  # the address is not what the certificate names
                c.list_collections()
    finally:
        srv.stop()


class Flaky(pb_grpc.SimdexServicer):
    """Answers UNAVAILABLE to the first attempt of each method, then answers; counts the attempts. Its Upsert reads
    the whole stream before it fails, as a server killed between its commit and its answer would look."""

    def __init__(self):
        self.attempts = Counter()

    def _fail_first(self, method: str, context) -> None:
        self.attempts[method] += 1
        if self.attempts[method] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")

    def Count(self, request, context):
        self._fail_first("Count", context)
        return pb.CountResponse(count=7)

    def CreateCollection(self, request, context):
        self._fail_first("CreateCollection", context)
        return pb.Collection(name=request.name, dim=request.dim)

    def Delete(self, request, context):
        self._fail_first("Delete", context)
        return pb.DeleteResponse(deleted=len(request.ids))

    def Upsert(self, request_iterator, context):
        n = sum(len(m.ids) for m in request_iterator)
        self._fail_first("Upsert", context)
        return pb.UpsertResponse(upserted=n)


@pytest.fixture
def flaky():
    servicer = Flaky()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_SimdexServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.target = f"127.0.0.1:{port}"
    yield servicer
    server.stop(None)


CLIENTS = pytest.mark.parametrize("make", [Client, BlockingAsyncClient.connect], ids=["client", "async"])


@CLIENTS
def test_a_read_is_retried_on_unavailable(flaky, make):
    c = make([flaky.target])
    try:
        assert c.count("s") == 7
    finally:
        c.close()
    assert flaky.attempts["Count"] == 2


@CLIENTS
def test_a_write_is_not_retried_by_grpc(flaky, make):
    c = make([flaky.target])
    try:
        with pytest.raises(Unavailable, match="replica going away"):
            c.create_collection("s", 4)
    finally:
        c.close()
    assert flaky.attempts["CreateCollection"] == 1


@CLIENTS
def test_a_delete_with_ignore_missing_is_repeated(flaky, make):
    c = make([flaky.target])
    try:
        assert c.delete("s", ["a", "b"], ignore_missing=True) == 2
    finally:
        c.close()
    assert flaky.attempts["Delete"] == 2


@CLIENTS
def test_a_delete_without_ignore_missing_is_not_repeated(flaky, make):
    c = make([flaky.target])
    try:
        with pytest.raises(Unavailable, match="replica going away"):
            c.delete("s", ["a", "b"])
    finally:
        c.close()
    assert flaky.attempts["Delete"] == 1


@CLIENTS
def test_an_upsert_whose_whole_stream_was_sent_is_not_repeated(flaky, make):
    c = make([flaky.target])
    x = np.zeros((3, 4), np.float32)
    try:
        with pytest.raises(Unavailable, match="replica going away; not retried: the whole stream had been sent"):
            c.upsert("s", ["a", "b", "c"], x)
    finally:
        c.close()
    assert flaky.attempts["Upsert"] == 1
