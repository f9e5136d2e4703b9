"""gRPC server: thin servicers over simdex.service.facade.Simdex, auth and limits, health and reflection."""
