"""The `simdex` command line: a client of the service (and the launcher of `simdex serve`)."""
