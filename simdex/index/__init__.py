"""FAISS only: the index wrapper (ann), back-end and thread settings, search batching, the readers-writer lock."""
