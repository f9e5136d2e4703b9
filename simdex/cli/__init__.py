"""The `simdex` command line: a client of the service (and the launcher of `simdex serve`).

One module per group of commands, each with `add_parsers(sub)`; `main` assembles them and dispatches:
serve (the gRPC server, imported on use), collection, items (upsert, search, get, count), cluster (and plot),
heads (heads, predict), embed (embedders, embed), densenet and seq2seq (trainers, translate), index (the batch
indexing job), lookup (the lookup page); common holds the connection options they share."""
