"""The server-side core: durable store (SQL), FAISS index wrapper, filters, collections. Needs the server extra."""
