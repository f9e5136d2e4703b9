"""Scoped tokens (`simdex serve --tokens-file`): the file's checks, and every RPC family with each access level on a
real server: PERMISSION_DENIED naming the collection, UNAUTHENTICATED without a known token, listings cut to what
a token covers, the Upsert stream judged by its first message, deny by default for RPCs the table lacks."""
from __future__ import annotations

import json
import logging

import grpc
import numpy as np
import pytest

from simdex.proto import simdex_pb2 as pb
from simdex.proto import simdex_pb2_grpc as pb_grpc
from simdex.server import tokens as tk
from simdex.server.tokens import Token, Tokens, TokensFileError

SECRETS = {"admin": "adm-7f3a", "docs-admin": "dadm-91c2", "write": "wr-5b0e", "read": "rd-c4d1",
           "nobody": "not-a-token"}  # "nobody" is in no tokens file
TOKENS = {"tokens": [
    {"name": "root", "token": SECRETS["admin"], "access": "admin", "collections": ["*"]},
    {"name": "docs-admin", "token": SECRETS["docs-admin"], "access": "admin", "collections": ["docs-*"]},
    {"name": "writer", "token": SECRETS["write"], "access": "write", "collections": ["docs-*"]},
    {"name": "reader", "token": SECRETS["read"], "access": "read", "collections": ["docs-*", "digits"]},
]}
LEVEL_TOKEN = {"read": "read", "write": "write", "admin": "docs-admin"}  # each level, all on docs-*
X = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
LABELS = [{"label": i % 2} for i in range(20)]


def md(who: str | None):
    return [("authorization", f"Bearer {SECRETS[who]}")] if who else []


def matrix(x: np.ndarray) -> pb.Matrix:
    return pb.Matrix(data=x.astype("<f4").tobytes(), shape=list(x.shape))


def upsert_msgs(collection: str, ids: list[str], x: np.ndarray, meta=None):
    return pb.UpsertRequest(collection=collection, ids=ids, vectors=matrix(x),
                            metadata=[json.dumps(m) for m in meta] if meta else [])


# ---- the file ------------------------------------------------------------------------------------------------------

def test_a_valid_file_parses_with_levels_and_globs():
    toks = Tokens.parse(json.dumps(TOKENS))
    reader = next(t for t in toks.tokens if t.name == "reader")
    assert reader.allows("read", "docs-a") and reader.allows("read", "digits")
    assert not reader.allows("read", "Docs-a")  # case-sensitive globs
    assert not reader.allows("write", "docs-a") and not reader.allows("read", "digits2")
    writer = next(t for t in toks.tokens if t.name == "writer")
    assert writer.allows("read", "docs-x") and writer.allows("write", "docs-x") and not writer.allows("admin", "docs-x")
    assert [t.server_wide_admin for t in toks.tokens] == [True, False, False, False]
    assert SECRETS["read"] not in repr(reader)


@pytest.mark.parametrize("doc, words", [
    ("{not json", "not valid JSON"),
    ('[{"name": "a"}]', 'expected a JSON object {"tokens"'),
    ('{"tokens": []}', "no tokens"),
    ('{"tokens": [3]}', "tokens[0]: expected an object"),
    ('{"tokens": [{"name": "a", "token": "t", "access": "read"}]}', "tokens[0] (name 'a'): missing ['collections']"),
    ('{"tokens": [{"name": "a", "token": "t", "access": "read", "collections": ["*"], "scope": 1}]}',
     "unknown fields ['scope']"),
    ('{"tokens": [{"name": "a", "token": "t", "access": "rw", "collections": ["*"]}]}',
     "access must be one of ['read', 'write', 'admin'], got 'rw'"),
    ('{"tokens": [{"name": "a", "token": "t", "access": "read", "collections": []}]}',
     "collections must be a non-empty list"),
    ('{"tokens": [{"name": "a", "token": "t", "access": "read", "collections": "docs"}]}',
     "collections must be a non-empty list"),
    ('{"tokens": [{"name": "", "token": "t", "access": "read", "collections": ["*"]}]}', "name must be a non-empty"),
    ('{"tokens": [{"name": "a", "token": "two words", "access": "read", "collections": ["*"]}]}',
     "printable ASCII without spaces"),
    ('{"tokens": [{"name": "a", "token": "t1", "access": "read", "collections": ["*"]}, '
     '{"name": "a", "token": "t2", "access": "read", "collections": ["*"]}]}', "the same name as an earlier token"),
    ('{"tokens": [{"name": "a", "token": "same-secret", "access": "read", "collections": ["*"]}, '
     '{"name": "b", "token": "same-secret", "access": "admin", "collections": ["*"]}]}',
     "tokens[1] (name 'b'): the same token as an earlier token"),
])
def test_a_bad_file_is_refused_naming_the_entry_and_never_the_secret(doc, words):
    with pytest.raises(TokensFileError) as ei:
        Tokens.parse(doc)
    assert words in str(ei.value)
    for secret in ("two words", "same-secret"):
        assert secret not in str(ei.value)


def test_load_names_the_file(tmp_path):
    f = tmp_path / "tokens.json"
    f.write_text('{"tokens": [{"name": "a", "token": "t", "access": "owner", "collections": ["*"]}]}')
    with pytest.raises(TokensFileError, match=f"tokens file '{f}': tokens\\[0\\] \\(name 'a'\\): access"):
        Tokens.load(f)
    with pytest.raises(TokensFileError, match="cannot be read"):
        Tokens.load(tmp_path / "missing.json")


def test_find_compares_every_token_whatever_matches(monkeypatch):
    toks = Tokens.parse(json.dumps(TOKENS))
    calls = []
    real = tk.hmac.compare_digest
    monkeypatch.setattr(tk.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert toks.find(f"Bearer {SECRETS['admin']}").name == "root"  # the first one matches: the rest still compared
    assert len(calls) == len(TOKENS["tokens"])
    assert toks.find("Bearer nope") is None and toks.find("") is None
    assert toks.find(SECRETS["admin"]) is None  # the Bearer prefix is part of what is compared
    assert len(calls) == 4 * len(TOKENS["tokens"])


def test_the_single_token_file_is_one_server_wide_admin_token():
    (t,) = Tokens.single("s3cret").tokens
    assert t.server_wide_admin and t.allows("admin", "anything")
    with pytest.raises(TokensFileError, match="the token file: the token must be"):
        Tokens.single("has space")


def test_every_rpc_of_the_service_has_a_rule_or_is_server_wide_admin():
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Simdex"].methods}
    service = pb.DESCRIPTOR.services_by_name["Simdex"].full_name
    ruled = {m for m in methods if f"/{service}/{m}" in tk.RULES}
    assert methods - ruled <= {"Backup"}, "a new RPC needs a rule (or stays admin-only on every collection)"
    assert tk.rule_for(f"/{service}/Backup") is tk.SERVER_WIDE
    assert tk.rule_for("/some.Other/Method") is tk.SERVER_WIDE


# ---- a real server -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import InProcessServer

    srv = InProcessServer(tmp_path_factory.mktemp("tok"), tokens=Tokens.parse(json.dumps(TOKENS)))
    channel = grpc.insecure_channel(srv.target)
    stub = pb_grpc.SimdexStub(channel)
    root = md("admin")
    for name in ("docs-a", "docs-b", "digits", "other"):
        stub.CreateCollection(pb.CreateCollectionRequest(name=name, dim=4), metadata=root)
        stub.Upsert(iter([upsert_msgs(name, [f"i{j}" for j in range(20)], X, LABELS)]), metadata=root)
    for head, col in (("h-docs", "docs-a"), ("h-other", "other")):
        stub.TrainHead(pb.TrainHeadRequest(collection=col, head=head, label_field="label"), metadata=root)
    srv.stub, srv.channel = stub, channel
    yield srv
    channel.close()
    srv.stop()


def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


# (family, RPC) -> (the access it needs, a call of it on docs-* by token `who` with fresh names `tag`)
def _calls(stub, who: str, tag: str, root):
    m = md(who)
    return {
        "CreateCollection": ("admin", lambda: stub.CreateCollection(
            pb.CreateCollectionRequest(name=f"docs-new-{tag}", dim=4), metadata=m)),
        "DeleteCollection": ("admin", lambda: (
            stub.CreateCollection(pb.CreateCollectionRequest(name=f"docs-gone-{tag}", dim=4), metadata=root),
            stub.DeleteCollection(pb.DeleteCollectionRequest(name=f"docs-gone-{tag}"), metadata=m))),
        "GetCollection": ("read", lambda: stub.GetCollection(pb.GetCollectionRequest(name="docs-a"), metadata=m)),
        "Upsert": ("write", lambda: stub.Upsert(iter([upsert_msgs("docs-b", [f"u-{tag}"], X[:1])]), metadata=m)),
        "Delete": ("write", lambda: stub.Delete(pb.DeleteRequest(collection="docs-b", ids=[f"u-{tag}"],
                                                                 ignore_missing=True), metadata=m)),
        "Get": ("read", lambda: stub.Get(pb.GetRequest(collection="docs-a", ids=["i1"]), metadata=m)),
        "Count": ("read", lambda: stub.Count(pb.CountRequest(collection="docs-a"), metadata=m)),
        "Search": ("read", lambda: stub.Search(pb.SearchRequest(collection="docs-a", queries=matrix(X[:2]), k=3),
                                               metadata=m)),
        "SearchStream": ("read", lambda: list(stub.SearchStream(
            iter([pb.SearchRequest(collection="docs-a", queries=matrix(X[:2]), k=3)] * 2), metadata=m))),
        "Cluster": ("read", lambda: stub.Cluster(pb.ClusterRequest(collection="docs-a", bandwidth=10.0), metadata=m)),
        "TrainHead": ("admin", lambda: stub.TrainHead(
            pb.TrainHeadRequest(collection="docs-a", head=f"h-new-{tag}", label_field="label"), metadata=m)),
        "GetHead": ("read", lambda: stub.GetHead(pb.GetHeadRequest(name="h-docs"), metadata=m)),
        "ListHeads": ("read", lambda: stub.ListHeads(pb.ListHeadsRequest(collection="docs-a"), metadata=m)),
        "DeleteHead": ("admin", lambda: (
            stub.TrainHead(pb.TrainHeadRequest(collection="docs-a", head=f"h-gone-{tag}", label_field="label"),
                           metadata=root),
            stub.DeleteHead(pb.DeleteHeadRequest(name=f"h-gone-{tag}"), metadata=m))),
        "Predict": ("read", lambda: stub.Predict(pb.PredictRequest(head="h-docs", ids=["i1", "i2"]), metadata=m)),
        "ListCollections": ("read", lambda: stub.ListCollections(pb.ListCollectionsRequest(), metadata=m)),
        "ListEmbedders": ("read", lambda: stub.ListEmbedders(pb.ListEmbeddersRequest(), metadata=m)),
    }


RPCS = list(_calls(None, "read", "", []))


@pytest.mark.parametrize("level", ["read", "write", "admin"])
@pytest.mark.parametrize("rpc", RPCS)
def test_each_rpc_family_with_each_access_level(server, level, rpc):
    needs, call = _calls(server.stub, LEVEL_TOKEN[level], f"{level}-{rpc.lower()}", md("admin"))[rpc]
    code, details = code_of(call)
    if tk.LEVELS[level] >= tk.LEVELS[needs]:
        assert code == grpc.StatusCode.OK, details
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert f"needs {needs} access to collection 'docs-" in details and f"has {level} access" in details


@pytest.mark.parametrize("rpc", RPCS)
def test_no_token_or_an_unknown_one_is_unauthenticated(server, rpc):
    for who, words in ((None, "missing bearer token"), ("nobody", "invalid bearer token")):
        code, details = code_of(_calls(server.stub, who, f"anon-{who}", md("admin"))[rpc][1])
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, words)


@pytest.mark.parametrize("request_, rpc", [
    (pb.GetCollectionRequest(name="other"), "GetCollection"),
    (pb.CountRequest(collection="other"), "Count"),
    (pb.GetRequest(collection="other", ids=["i1"]), "Get"),
    (pb.SearchRequest(collection="other", queries=matrix(X[:1]), k=1), "Search"),
    (pb.ClusterRequest(collection="other"), "Cluster"),
    (pb.ListHeadsRequest(collection="other"), "ListHeads"),
    (pb.DeleteRequest(collection="other", ids=["i1"]), "Delete"),
])
def test_a_collection_the_token_does_not_cover_is_denied_by_name(server, request_, rpc):
    code, details = code_of(lambda: getattr(server.stub, rpc)(request_, metadata=md("write")))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "token 'writer' does not cover collection 'other'" in details and SECRETS["write"] not in details
    assert server.service.count("other") == 20  # nothing deleted


def test_each_search_of_a_stream_is_judged_on_its_own(server):
    """SearchStream carries many searches: one the token does not cover ends the stream with PERMISSION_DENIED
    after the answers before it; its first message being allowed admits nothing after it."""
    def req(collection: str, head: str = "") -> pb.SearchRequest:
        return pb.SearchRequest(collection=collection, head=head, queries=matrix(X[:1]), k=2)

    for denied, words in ((req("other"), "token 'reader' does not cover collection 'other'"),
                          (req("docs-a", head="h-other"), "collection 'other' (of head 'h-other')")):
        answers = []
        with pytest.raises(grpc.RpcError) as ei:
            for answer in server.stub.SearchStream(iter([req("docs-a"), req("digits"), denied, req("docs-a")]),
                                                   metadata=md("read")):
                answers.append(answer)
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED and words in ei.value.details()
        assert len(answers) == 2  # the two allowed searches before it were answered, the one after it was not


def test_heads_are_judged_by_their_collection(server):
    s, m = server.stub, md("read")
    for call in (lambda: s.Predict(pb.PredictRequest(head="h-other", ids=["i1"]), metadata=m),
                 lambda: s.GetHead(pb.GetHeadRequest(name="h-other"), metadata=m),
                 lambda: s.Search(pb.SearchRequest(collection="docs-a", head="h-other", queries=matrix(X[:1]), k=1),
                                  metadata=m)):
        code, details = code_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "collection 'other' (of head 'h-other')" in details
    code, details = code_of(lambda: s.DeleteHead(pb.DeleteHeadRequest(name="h-other"), metadata=md("docs-admin")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'other' (of head 'h-other')" in details
    assert server.service.get_head("h-other").collection == "other"  # not deleted
    # a head that does not exist: the servicer says so, to any valid token
    code, details = code_of(lambda: s.Predict(pb.PredictRequest(head="nope", ids=["i1"]), metadata=m))
    assert code == grpc.StatusCode.NOT_FOUND


def test_train_head_needs_admin_on_the_target_collection_too(server):
    req = pb.TrainHeadRequest(collection="docs-a", head="p-docs", kind="projection", target_collection="other")
    code, details = code_of(lambda: server.stub.TrainHead(req, metadata=md("docs-admin")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "collection 'other'" in details


def test_listings_show_only_what_the_token_covers(server):
    s = server.stub
    names = {who: [c.name for c in s.ListCollections(pb.ListCollectionsRequest(), metadata=md(who)).collections]
             for who in ("admin", "read", "write")}
    assert {"docs-a", "docs-b", "digits", "other"} <= set(names["admin"])
    assert set(names["read"]) == {n for n in names["admin"] if n.startswith("docs-") or n == "digits"}
    assert set(names["write"]) == {n for n in names["admin"] if n.startswith("docs-")}
    heads = {who: {h.collection for h in s.ListHeads(pb.ListHeadsRequest(), metadata=md(who)).heads}
             for who in ("admin", "read")}
    assert heads["admin"] >= {"docs-a", "other"} and "other" not in heads["read"] and "docs-a" in heads["read"]


def test_embedders_and_the_translator_take_any_valid_token(server):
    s = server.stub
    calls = {"Embed": lambda m: s.Embed(pb.EmbedRequest(embedder="no-such-embedder", texts=["a"]), metadata=m),
             "Translate": lambda m: s.Translate(pb.TranslateRequest(model="no-such-model", texts=["a"]), metadata=m)}
    for rpc, call in calls.items():
        for who in ("read", "write", "admin"):
            code, details = code_of(lambda: call(md(who)))
            assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), (rpc, details)
            assert "no-such" in details  # the servicer answered: past the token check
        assert code_of(lambda: call(md(None)))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_an_upsert_stream_is_judged_by_its_first_message(server):
    s = server.stub
    before = server.service.count("other")
    code, details = code_of(lambda: s.Upsert(iter([upsert_msgs("other", ["z1"], X[:1])]), metadata=md("write")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "collection 'other'" in details
    code, details = code_of(lambda: s.Upsert(iter([upsert_msgs("docs-a", ["z1"], X[:1])]), metadata=md("read")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "needs write access to collection 'docs-a'" in details
    # a stream that starts on a covered collection and turns to another is refused whole by the stream reader
    msgs = [upsert_msgs("docs-a", ["z2"], X[:1]), upsert_msgs("other", ["z3"], X[1:2])]
    code, details = code_of(lambda: s.Upsert(iter(msgs), metadata=md("write")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "other" in details
    assert server.service.count("other") == before
    assert server.service.get("docs-a", ["z1", "z2"], ignore_missing=True) == []
    # a stream of several messages on a covered collection goes through, every message stored
    msgs = [upsert_msgs("docs-b", [f"s{j}"], X[j:j + 1]) for j in range(3)]
    assert s.Upsert(iter(msgs), metadata=md("write")).upserted == 3


def test_an_rpc_without_a_rule_needs_an_admin_token_for_every_collection(tmp_path):
    from simdex.server.app import create_server
    from simdex.service.facade import Simdex

    svc = Simdex(tmp_path / "d", snapshot_interval=0)
    srv, port, _ = create_server(svc, tokens=Tokens.parse(json.dumps(TOKENS)))
    echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, request_deserializer=None,
                                               response_serializer=None)
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Extra", {"Copy": echo}),))
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/test.Extra/Copy")
            assert call(b"ping", metadata=md("admin")) == b"ping"
            for who in ("docs-admin", "write", "read"):
                code, details = code_of(lambda: call(b"ping", metadata=md(who)))
                assert code == grpc.StatusCode.PERMISSION_DENIED
                assert "Copy needs an admin token that covers every collection ('*')" in details
    finally:
        srv.stop(None).wait()
        svc.close()


def test_secrets_never_reach_the_log(server, caplog):
    caplog.set_level(logging.DEBUG)
    for who in ("read", "write", "docs-admin", "nobody"):
        code_of(lambda: server.stub.DeleteCollection(pb.DeleteCollectionRequest(name="other"), metadata=md(who)))
    assert "refused to token 'reader'" in caplog.text  # the refusals are logged, by token name
    assert not any(secret in caplog.text for secret in SECRETS.values())


def test_both_token_flags_are_refused_at_start(tmp_path, capsys):
    from simdex.cli.main import main

    (tmp_path / "t").write_text("abc\n")
    (tmp_path / "ts.json").write_text(json.dumps(TOKENS))
    with pytest.raises(SystemExit, match="give --token-file .* or --tokens-file .*, not both"):
        main(["serve", "--data", str(tmp_path / "d"), "--port", "0", "--token-file", str(tmp_path / "t"),
              "--tokens-file", str(tmp_path / "ts.json")])
    assert not (tmp_path / "d").exists()  # refused before anything was opened
    bad = {"tokens": [{"name": "x", "token": "t", "access": "root", "collections": ["*"]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match=r"tokens\[0\] \(name 'x'\): access must be one of"):
        main(["serve", "--data", str(tmp_path / "d"), "--port", "0", "--tokens-file", str(tmp_path / "bad.json")])
    from simdex.server.app import create_server

    with pytest.raises(ValueError, match="not both"):
        create_server(None, token="a", tokens=Tokens([Token("x", "y", "read", ("*",))]))
