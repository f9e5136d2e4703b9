"""Friction found by users of other languages and of the SDK (issue 15): a collection with an embedder takes its
dim; a filter or metadata field that is not a JSON object text says what it must be; a search knob the index kind
does not read is refused, naming the ones it does. Over gRPC (the `stub` fixture shows the wire), and through
every client (the `client` fixture: remote, in-process, asyncio)."""
from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from conftest import clustered, oracle

from simdex.clients import InvalidArgument
from simdex.proto import simdex_pb2 as pb

EMB = "densenet-bc-random"  # 342-d, random weights: nothing to download
D = 16


def wire_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def packed(x: np.ndarray) -> pb.Matrix:
    return pb.Matrix(data=x.astype("<f4").tobytes(), shape=list(x.shape))


# ---- dim from the embedder -----------------------------------------------------------------------------------
def test_create_collection_with_an_embedder_needs_no_dim(client):
    info = client.create_collection("scans", embedder=EMB, metric="cosine")
    assert (info.dim, info.embedder) == (342, EMB)
    assert client.get_collection("scans").dim == 342


def test_the_facade_takes_the_embedders_dim(sqlite_service):
    assert sqlite_service.create_collection("scans", embedder=EMB).dim == 342


def test_a_create_request_with_dim_0_and_an_embedder_takes_its_dim(stub):
    c = stub.CreateCollection(pb.CreateCollectionRequest(name="scans", embedder=EMB))
    assert c.dim == 342


def test_no_dim_and_no_embedder_says_dim_may_be_left_out_only_with_an_embedder(client):
    with pytest.raises(InvalidArgument, match=r"dim must be a positive integer, got 0 \(.*only with an embedder"):
        client.create_collection("plain")
    assert client.list_collections() == []


# ---- filter and metadata as JSON object text -----------------------------------------------------------------
@pytest.fixture
def filled(stub):
    stub.CreateCollection(pb.CreateCollectionRequest(name="v", dim=D))
    stub.Upsert(iter([pb.UpsertRequest(collection="v", ids=["a", "b"], vectors=packed(np.eye(2, D)),
                                       metadata=['{"f": 1}', '{"f": 2}'])]))
    return stub


@pytest.mark.parametrize("text, why", [
    ("[object Object]", r"not valid JSON: Expecting value"),
    ('["f"]', r"a JSON list, not an object of field conditions"),
    ("7", r"a JSON int"),
])
def test_a_filter_that_is_not_a_json_object_text_says_so(filled, text, why):
    expected = rf"^filter must be a JSON object encoded as text, got '{re.escape(text)}' \({why}"
    for call in (lambda: filled.Count(pb.CountRequest(collection="v", filter=text)),
                 lambda: filled.Search(pb.SearchRequest(collection="v", queries=packed(np.ones((1, D))), k=1,
                                                        filter=text))):
        err = wire_error(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.search(expected, err.details()), err.details()


def test_metadata_that_is_not_a_json_object_text_names_the_item_and_stores_nothing(filled):
    err = wire_error(lambda: filled.Upsert(iter([pb.UpsertRequest(
        collection="v", ids=["c", "d"], vectors=packed(np.ones((2, D))), metadata=['{"f": 3}', "[object Object]"])])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("metadata[1] must be a JSON object encoded as text, got '[object Object]' "
                                    "(not valid JSON"), err.details()
    assert dict(err.trailing_metadata())["simdex-item"] == "1"
    assert filled.Count(pb.CountRequest(collection="v")).count == 2


def test_the_clients_say_the_same_before_sending(client):
    client.create_collection("v", D)
    with pytest.raises(InvalidArgument, match=r"^filter must be a JSON object encoded as text, got list \(give a"):
        client.count("v", filter=["f"])
    with pytest.raises(InvalidArgument, match=r"^metadata\[0\] must be a JSON object encoded as text, got int") as e:
        client.upsert("v", ["a"], np.ones((1, D), np.float32), metadata=[5])
    assert e.value.item == 0
    with pytest.raises(InvalidArgument, match=r"^metadata\[0\] must be a JSON object encoded as text, got '\[1\]' "
                                              r"\(a JSON list\)"):
        client.upsert("v", ["a"], np.ones((1, D), np.float32), metadata=["[1]"])
    assert client.count("v") == 0


# ---- search knobs the index kind does not read ---------------------------------------------------------------
@pytest.mark.parametrize("index, params, message", [
    ("Flat", {"efSearch": 64}, "params efSearch: index 'Flat' does not use it; it takes no search parameters"),
    ("Flat", {"nprobe": 4, "k_factor": 2},
     "params nprobe, k_factor: index 'Flat' does not use them; it takes no search parameters"),
    ("HNSW16", {"nprobe": 4}, "params nprobe: index 'HNSW16' does not use it; it takes efSearch"),
    ("IVF4,Flat", {"efSearch": 64}, "params efSearch: index 'IVF4,Flat' does not use it; it takes nprobe"),
    ("IVF4,PQ4x4,RFlat", {"efSearch": 8},
     "params efSearch: index 'IVF4,PQ4x4,RFlat' does not use it; it takes nprobe, k_factor"),
])
def test_a_knob_the_index_kind_does_not_use_is_invalid_argument(client, index, params, message):
    client.create_collection("v", D, index=index)
    with pytest.raises(InvalidArgument) as err:
        client.search("v", np.ones((1, D), np.float32), k=1, params=params)
    assert err.value.message == message


def test_the_wire_refuses_an_unused_knob_as_invalid_argument(filled):
    err = wire_error(lambda: filled.Search(pb.SearchRequest(collection="v", queries=packed(np.ones((1, D))), k=1,
                                                            params=pb.SearchParams(ef_search=64))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "it takes no search parameters" in err.details()


@pytest.mark.parametrize("index, params", [("HNSW16", {"efSearch": 256}), ("IVF4,Flat", {"nprobe": 4}),
                                           ("IVF4,PQ4x4,RFlat", {"nprobe": 4, "k_factor": 64})])
def test_the_knobs_a_kind_uses_still_tune_it_to_the_exact_answer(client, index, params):
    xb, xq = clustered(1200, D, seed=7), clustered(20, D, seed=8)
    names = [f"v{i}" for i in range(len(xb))]
    client.create_collection("v", D, index=index)
    client.upsert("v", names, xb)
    assert client.get_collection("v").trained  # past the kinds' training size: the knobs are read
    _, true_idx = oracle(xb, xq, 5)
    res = client.search("v", xq, k=5, params=params)  # every list probed, every candidate refined: exact
    assert res.ids == [[names[j] for j in t] for t in true_idx]
