"""Where a client connects, and how one channel spreads its calls over several servers and retries them.

A target is one of:
- `"host:port"` or any gRPC target URI (`"dns:///name:50051"`, `"ipv4:..."`, `"unix:..."`): given to gRPC as it is,
  so a DNS name is followed by gRPC's resolver (every address it resolves to is a server, re-resolved as servers
  come and go);
- a list `["10.0.0.1:50051", "db2:50051"]`, or the same as one comma-separated string (for `--target` and
  `SIMDEX_TARGET`): each host name is resolved once, here, and the list becomes one `ipv4:` (or `ipv6:`) target of
  fixed addresses.

Every channel gets one service config (`service_config`): `round_robin` over the addresses, and gRPC's retryPolicy
on UNAVAILABLE for the methods in `RETRIED`, those that store nothing, so a repeat on another server gives the
same answer. Writes are not in it: the client retries an Upsert or a Delete only when a repeat is provably safe
(simdex.clients.remote). gRPC also retries by itself, whatever the method, a call that never left this process.
"""
from __future__ import annotations

import ipaddress
import json
import random
import re
import socket
from typing import Iterator, NamedTuple, Sequence

from simdex.errors import InvalidArgument

SERVICE = "simdex.v1.Simdex"
# Methods that read or compute without storing (Backup copies): repeated on UNAVAILABLE, on any server.
RETRIED = ("GetCollection", "ListCollections", "Get", "Count", "Search", "SearchStream", "Cluster", "GetHead",
           "ListHeads", "Predict", "ListEmbedders", "Embed", "Translate", "Backup")
# gRPC's retry backoff (A6): attempt n+1 waits uniform(0, min(INITIAL * MULTIPLIER**(n-1), MAX)) seconds.
MAX_ATTEMPTS = 5            # gRPC's own ceiling
INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
BACKOFF_MULTIPLIER = 2.0
# Target URI schemes of gRPC's resolvers: a string that starts with one is a URI, handed over as it is.
SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock", "xds")
_HOST_PORT = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<v6port>\d+)|(?P<host>[^:\[\]]+):(?P<port>\d+)")


class Target(NamedTuple):
    """What a channel is made with: the gRPC target `uri` and, for a resolved list, the `authority` (the first
    entry as written: the name TLS certificates are checked against and the `:authority` header); else None."""
    uri: str
    authority: str | None


def parse(target: str | Sequence[str]) -> Target:
    """A target as Client takes it -> the channel's Target. InvalidArgument for an empty list, an entry that is not
    host:port, a host that does not resolve, or hosts with no address family in common."""
    if isinstance(target, str):
        if "," not in target or target.startswith(tuple(f"{s}:" for s in SCHEMES)):
            return Target(target, None)
        target = target.split(",")
    entries = [str(e).strip() for e in target]
    if not entries or not all(entries):
        raise InvalidArgument(f"target: {list(target)!r} has no server or an empty entry; give host:port for each")
    resolved = [resolve(e) for e in entries]
    return Target(address_list(entries, resolved), entries[0])


def servers(target: Target) -> int:
    """How many servers a Target names: the addresses of a resolved list, else 1 (one host:port, or a name the
    channel resolves itself, such as dns:///)."""
    return target.uri.count(",") + 1 if target.authority is not None else 1


def split_host_port(entry: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port)."""
    m = _HOST_PORT.fullmatch(entry)
    port = int(m["v6port"] or m["port"]) if m else 0
    if not 0 < port < 65536:
        raise InvalidArgument(f"target {entry!r}: give host:port, port 1-65535 (an IPv6 address in brackets: "
                              "[::1]:50051)")
    return m["v6"] or m["host"], port


def resolve(entry: str) -> tuple[list[str], list[str]]:
    """"host:port" -> (its IPv4 addresses, its IPv6 addresses) as "a.b.c.d:port" / "[v6]:port", in the resolver's
    order, each once."""
    host, port = split_host_port(entry)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidArgument(f"target {entry!r}: host {host!r} does not resolve ({exc.strerror})") from None
    v4, v6 = [], []
    for family, *_, sockaddr in infos:
        addr = ipaddress.ip_address(sockaddr[0])
        out, text = (v4, f"{addr}:{port}") if family == socket.AF_INET else (v6, f"[{addr}]:{port}")
        if text not in out:
            out.append(text)
    return v4, v6


def address_list(entries: list[str], resolved: list[tuple[list[str], list[str]]]) -> str:
    """One `ipv4:a,b` target when every entry has an IPv4 address (only those are used), else one `ipv6:` target
    (gRPC's target lists take one family)."""
    for scheme, i in (("ipv4", 0), ("ipv6", 1)):
        if all(r[i] for r in resolved):
            return f"{scheme}:" + ",".join(dict.fromkeys(a for r in resolved for a in r[i]))
    v4_only = next(e for e, r in zip(entries, resolved) if not r[1])
    v6_only = next(e for e, r in zip(entries, resolved) if not r[0])
    raise InvalidArgument(f"target: {v4_only!r} has only IPv4 addresses and {v6_only!r} only IPv6 ones; one channel "
                          "takes one address family, so give servers of one family")


def service_config() -> str:
    """The service config JSON of every client channel: round_robin, and retries of RETRIED on UNAVAILABLE."""
    return json.dumps({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{"service": SERVICE, "method": m} for m in RETRIED],
            "retryPolicy": {
                "maxAttempts": MAX_ATTEMPTS,
                "initialBackoff": f"{INITIAL_BACKOFF_S}s",
                "maxBackoff": f"{MAX_BACKOFF_S}s",
                "backoffMultiplier": BACKOFF_MULTIPLIER,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


def retry_pauses() -> Iterator[float]:
    """The pauses before the retries of one call, as gRPC's retryPolicy above takes them: MAX_ATTEMPTS - 1 of
    them, each uniform in (0, the exponential backoff), for the client's own retries of safe writes."""
    for n in range(MAX_ATTEMPTS - 1):
        yield random.uniform(0, min(INITIAL_BACKOFF_S * BACKOFF_MULTIPLIER ** n, MAX_BACKOFF_S))
