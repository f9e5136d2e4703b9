"""Search: the FAISS index wrapper (ann), back-end and thread settings, search batching, the readers-writer lock,
and exact search on torch tensors (torch_exact) swapped in for exact kinds by torch_ann."""
