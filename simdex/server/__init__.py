"""gRPC server: thin servicers over simdex.index.service.Simdex, auth and limits, health and reflection."""
