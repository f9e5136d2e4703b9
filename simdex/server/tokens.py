"""Scoped access tokens (`simdex serve --tokens-file F`): who may call which RPC on which collections.

The file is JSON, checked whole at start (a mistake stops the server with a message naming the entry and field):

    {"tokens": [{"name": "reader", "token": "SECRET", "access": "read", "collections": ["scans-*", "digits"]}]}

Access levels are ordered, each including the ones before it: read < write < admin. `collections` are names or
glob patterns (`fnmatch`, case-sensitive; `["*"]` covers every collection). `RULES` says, per RPC, which level it
needs and which request fields name its collections; an RPC missing from the table needs an admin token that
covers every collection (deny by default: a new RPC is closed until it is given a rule). Secrets are compared in
constant time against every token and appear in no message and no log line (names do).
"""
from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Sequence

from simdex.proto import simdex_pb2 as pb

LEVELS = {"read": 1, "write": 2, "admin": 3}
EVERY_COLLECTION = "*"
TOKEN_KEYS = ("name", "token", "access", "collections")
SECRET = re.compile(r"[\x21-\x7e]+")  # what an `authorization: Bearer ...` header can carry: printable, no spaces
SINGLE_TOKEN_NAME = "token-file"      # the one admin token of `--token-file`


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the file, the entry and the field (never a secret)."""


@dataclass(frozen=True)
class Token:
    name: str
    secret: str = field(repr=False)
    access: str                       # "read" | "write" | "admin"
    collections: tuple[str, ...]      # names or glob patterns

    def covers(self, collection: str) -> bool:
        return any(fnmatchcase(collection, p) for p in self.collections)

    def allows(self, access: str, collection: str) -> bool:
        return LEVELS[self.access] >= LEVELS[access] and self.covers(collection)

    @property
    def server_wide_admin(self) -> bool:
        return self.access == "admin" and EVERY_COLLECTION in self.collections

    def denial(self, method: str, access: str, collection: str, head: str = "") -> str:
        """Why this token may not call `method`, which needs `access` on `collection` (the collection of `head`)."""
        what = f"collection {collection!r}" + (f" (of head {head!r})" if head else "")
        if self.covers(collection):
            return f"{method} needs {access} access to {what}; token {self.name!r} has {self.access} access"
        return (f"token {self.name!r} does not cover {what} ({method} needs {access} access to it); it covers "
                f"{list(self.collections)}")

    def server_wide_denial(self, method: str) -> str:
        return (f"{method} needs an admin token that covers every collection ({EVERY_COLLECTION!r}); token "
                f"{self.name!r} has {self.access} access to {list(self.collections)}")


@dataclass(frozen=True)
class Rule:
    """What one RPC needs. access None: any valid token. `fields`: request fields naming collections (an empty one
    is left to the servicer to refuse); `head`: a request field naming a head, whose collection needs `access`
    too; `listing`: (response field, each entry's field naming its collection): entries the token does not cover
    are left out of the answer; `server_wide`: an admin token that covers every collection; `each`: a request
    stream whose every message is judged (SearchStream: each is a search of its own), not its first only."""
    access: str | None
    fields: tuple[str, ...] = ()
    head: str = ""
    listing: tuple[str, str] | None = None
    server_wide: bool = False
    each: bool = False


_SIMDEX = pb.DESCRIPTOR.services_by_name["Simdex"].full_name
_READ, _WRITE, _ADMIN = (Rule("read", ("collection",)), Rule("write", ("collection",)), Rule("admin", ("name",)))
_ANY = Rule(None)
RULES: dict[str, Rule] = {
    **{f"/{_SIMDEX}/{method}": rule for method, rule in {
        "CreateCollection": _ADMIN,
        "GetCollection": Rule("read", ("name",)),
        "ListCollections": Rule("read", listing=("collections", "name")),
        "DeleteCollection": _ADMIN,
        "Upsert": _WRITE,
        "Delete": _WRITE,
        "Get": _READ,
        "Count": _READ,
        "Search": Rule("read", ("collection",), head="head"),
        "SearchStream": Rule("read", ("collection",), head="head", each=True),
        "Cluster": _READ,
        "TrainHead": Rule("admin", ("collection", "target_collection"), head="head"),
        "GetHead": Rule("read", head="name"),
        "ListHeads": Rule("read", ("collection",), listing=("heads", "collection")),
        "DeleteHead": Rule("admin", head="name"),
        "Predict": Rule("read", head="head"),
        "ListEmbedders": _ANY,
        "Embed": _ANY,
        "Translate": _ANY,
    }.items()},
    # the schema is public (the .proto ships with the package): any valid token may read it
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _ANY,
}
SERVER_WIDE = Rule("admin", server_wide=True)


def rule_for(method: str) -> Rule:
    """The rule of the full method name ("/simdex.v1.Simdex/Search"); SERVER_WIDE for one the table lacks."""
    return RULES.get(method, SERVER_WIDE)


class Tokens:
    """The server's tokens. `find` tells which one an `authorization` header holds, in time that depends on the
    number of tokens only."""

    def __init__(self, tokens: Sequence[Token]):
        if not tokens:
            raise TokensFileError("no tokens: give at least one")
        for what, key in (("name", lambda t: t.name), ("token", lambda t: t.secret)):
            seen: set[str] = set()
            for i, t in enumerate(tokens):
                if key(t) in seen:
                    raise TokensFileError(f"tokens[{i}] (name {t.name!r}): the same {what} as an earlier token; "
                                          f"each token needs its own {what}")
                seen.add(key(t))
        self.tokens = tuple(tokens)
        self._expected = [(t, f"Bearer {t.secret}".encode()) for t in self.tokens]

    @classmethod
    def single(cls, secret: str) -> "Tokens":
        """The `--token-file` token: admin on every collection."""
        return cls([Token(SINGLE_TOKEN_NAME, _secret(secret, "the token file"), "admin", (EVERY_COLLECTION,))])

    @classmethod
    def load(cls, path: str | Path) -> "Tokens":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokensFileError(f"tokens file {str(path)!r} cannot be read: {exc}") from None
        try:
            return cls.parse(text)
        except TokensFileError as exc:
            raise TokensFileError(f"tokens file {str(path)!r}: {exc}") from None

    @classmethod
    def parse(cls, text: str) -> "Tokens":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokensFileError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        if not isinstance(doc, dict) or set(doc) != {"tokens"} or not isinstance(doc["tokens"], list):
            raise TokensFileError('expected a JSON object {"tokens": [{"name": ..., "token": ..., "access": ..., '
                                  '"collections": [...]}, ...]}')
        return cls([_token(i, entry) for i, entry in enumerate(doc["tokens"])])

    def find(self, authorization: str | bytes) -> Token | None:
        """The token whose `Bearer SECRET` is `authorization`, or None. Every token is compared, match or not."""
        given = authorization.encode() if isinstance(authorization, str) else authorization
        found = None
        for token, expected in self._expected:
            if hmac.compare_digest(given, expected):
                found = token
        return found


def _secret(secret: object, where: str) -> str:
    if not isinstance(secret, str) or not SECRET.fullmatch(secret):
        raise TokensFileError(f"{where}: the token must be a non-empty text of printable ASCII without spaces "
                              "(it travels in an HTTP/2 header)")
    return secret


def _token(i: int, entry: object) -> Token:
    where = f"tokens[{i}]"
    if not isinstance(entry, dict):
        raise TokensFileError(f"{where}: expected an object with {list(TOKEN_KEYS)}, got {type(entry).__name__}")
    if isinstance(entry.get("name"), str) and entry["name"]:
        where += f" (name {entry['name']!r})"
    if missing := [k for k in TOKEN_KEYS if k not in entry]:
        raise TokensFileError(f"{where}: missing {missing}")
    if unknown := sorted(set(entry) - set(TOKEN_KEYS)):
        raise TokensFileError(f"{where}: unknown fields {unknown}; a token has {list(TOKEN_KEYS)}")
    name, access, collections = entry["name"], entry["access"], entry["collections"]
    if not isinstance(name, str) or not name.strip():
        raise TokensFileError(f"{where}: name must be a non-empty text")
    if access not in LEVELS:
        raise TokensFileError(f"{where}: access must be one of {list(LEVELS)}, got {access!r}")
    if (not isinstance(collections, list) or not collections
            or not all(isinstance(c, str) and c for c in collections)):
        raise TokensFileError(f'{where}: collections must be a non-empty list of names or glob patterns (["*"] '
                              f"for all), got {collections!r}")
    return Token(name, _secret(entry["token"], where), access, tuple(collections))


def from_flags(token_file: str | None, tokens_file: str | None) -> Tokens | None:
    """The server's tokens from `--token-file` (one admin token) or `--tokens-file` (scoped tokens); None for
    neither. TokensFileError for both, an empty token file, or a tokens file that cannot be used."""
    if token_file and tokens_file:
        raise TokensFileError("give --token-file (one admin token) or --tokens-file (scoped tokens), not both")
    if tokens_file:
        return Tokens.load(tokens_file)
    if not token_file:
        return None
    try:
        secret = Path(token_file).read_text().strip()
    except OSError as exc:
        raise TokensFileError(f"token file {token_file!r} cannot be read: {exc}") from None
    if not secret:
        raise TokensFileError(f"token file {token_file} is empty")
    return Tokens.single(secret)
