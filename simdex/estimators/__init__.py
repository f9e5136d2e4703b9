"""scikit-learn-style estimators over vectors: mean shift over a FAISS index, linear heads (logistic, ridge)."""
