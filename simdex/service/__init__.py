"""The domain API (no protobuf): collections, validation, paging, search, clustering, heads, embedding, snapshots."""
