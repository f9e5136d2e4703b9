"""index.ann.search_knobs: the SearchParams fields each index kind reads, through its Refine and PreTransform
wrappers, the same structure `_walk_params` follows when it builds FAISS's SearchParameters."""
import pytest

from simdex.index.ann import AnnIndex, search_knobs


@pytest.mark.parametrize("desc, knobs", [
    ("Flat", set()), ("PQ4", set()), ("LSH", set()),
    ("HNSW16", {"ef_search"}), ("HNSW16,RFlat", {"ef_search", "k_factor"}),
    ("IVF4,Flat", {"nprobe"}), ("IVF4,SQ8", {"nprobe"}), ("IVF4_HNSW8,Flat", {"nprobe"}),
    ("PCA8,IVF4,Flat", {"nprobe"}), ("OPQ4,IVF4,PQ4", {"nprobe"}), ("IVF4,PQ4,RFlat", {"k_factor", "nprobe"}),
])
def test_each_kind_reads_the_knobs_of_its_structure(desc, knobs):
    assert search_knobs(16, "l2", desc) == knobs


def test_an_untrained_kind_keeps_its_knobs_while_searched_exactly():
    ann = AnnIndex(16, "l2", "IVF4,Flat")
    assert not ann.trained and ann.knobs == {"nprobe"}  # its exact stand-in reads none; the kind's are kept
    assert ann.fresh().knobs == {"nprobe"}
