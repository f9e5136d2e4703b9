"""The domain API (no protobuf, no gRPC): `facade.Simdex` is the thin front over one module per concern.

validation (names, ids, metadata, limits), collection (one collection: rows + index in step), collections (the
open ones by name), items (upsert, delete, get, count), search (k-NN, range pages, hit metadata), paging (tokens),
clustering (mean shift jobs), heads + head_training (linear heads), embedding (embedders, embed, translate),
snapshots (the index snapshot thread).
"""
