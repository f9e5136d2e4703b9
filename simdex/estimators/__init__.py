"""scikit-learn estimators over vectors: mean shift (exact kd-tree, FAISS or torch neighbour search) and the linear
heads (logistic by scikit-learn or torch, ridge). `simdex.estimators.meanshift` provides MeanShift, mean_shift,
estimate_bandwidth and get_bin_seeds with scikit-learn's signatures; errors are ValueErrors and simdex domain errors
at once (`simdex.estimators.validation`)."""
