"""The lookup web page (`simdex web`): a FastAPI app over the SDK client."""
