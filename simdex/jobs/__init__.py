"""Batch jobs that are clients of the service: `simdex index` (sources, decoding, resume)."""
