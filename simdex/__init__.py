"""simdex: a self-hosted similarity-search embedding service.

The bare package (this module, `simdex.errors`, `simdex.wire`, `simdex.proto`, `simdex.clients`) imports with
grpcio, protobuf and numpy only; the server side (`simdex.index`, `simdex.server`) needs the `server` extra
plus one of `cpu` or `gpu`.
"""
__version__ = "0.1.0"
