"""The server's budgets: what one request may cost, each a `simdex serve` flag with a sane default.

Light on purpose (the CLI builds its flags from this table without importing the server side). Every request
is admitted against these before its work starts (and, where the cost is only known on the way, during it); a
request over a budget is refused with RESOURCE_EXHAUSTED (or INVALID_ARGUMENT for an index description), in a
message that names the limit and its flag (`Limits.refuse`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from simdex.errors import InvalidArgument, ResourceExhausted


def _limit(default, flag: str, help: str):  # noqa: A002 - argparse's word
    return field(default=default, metadata={"flag": flag, "help": help})


@dataclass(frozen=True)
class Limits:
    max_search_results: int = _limit(
        2_000_000, "--max-search-results",
        "hits one Search may hold: nq x k for k-NN, hits found for range queries (about 12 bytes each)")
    max_search_metadata: int = _limit(
        16_384, "--max-search-metadata",
        "hits one Search may return with include_metadata (each hit's metadata is read and sent whole)")
    max_upsert_mb: float = _limit(
        96.0, "--max-upsert-mb",
        "MB of payload (vectors, ids, metadata, raw items) one Upsert stream, i.e. one Client.upsert call, may "
        "carry; it is held until the commit")
    max_decoded_mpixels: float = _limit(
        400.0, "--max-decoded-mpixels",
        "megapixels one request may decode from images and DICOM frames (width x height x frames x samples per pixel)")
    max_dicom_mb: float = _limit(
        64.0, "--max-dicom-mb", "MB a DICOM file may take once inflated (deflate transfer syntax)")
    max_frame_mpixels: float = _limit(
        16.0, "--max-frame-mpixels",
        "megapixels (width x height) one image or DICOM frame may have; one is decoded and preprocessed at a "
        "time, at a peak of 15-30 bytes a pixel (at most 100)")
    max_index_bytes_per_vector: int = _limit(
        65_536, "--max-index-bytes-per-vector",
        "estimated FAISS memory per vector an index description may need beyond the vector's own 4 x dim bytes "
        "(graph links, ids, refinement codes; e.g. HNSW32 needs ~270, HNSW100000 ~800,000)")
    max_index_fixed_mb: float = _limit(
        1024.0, "--max-index-fixed-mb",
        "estimated MB an index description holds whatever its number of vectors (coarse centroids and lists, "
        "codebooks, transform matrices; e.g. IVF65536 at dim 768 needs ~200, IVF10000000 at dim 8 ~1,800)")
    stop_grace_s: float = _limit(
        10.0, "--stop-grace-s",
        "seconds SIGTERM lets the calls in flight finish; those still open then are cancelled, none of their "
        "writes stored")

    max_cluster_mb: float = _limit(
        256.0, "--max-cluster-mb",
        "MB of stored vectors (n x dim x 4 bytes) one Cluster request may load and cluster; mean shift's peak "
        "working memory was measured at 3-8 times that (8 at 16-d, 3 at 512-d), plus ~40 MB")

    def refuse(self, name: str, value, what: str, error=ResourceExhausted):
        """The error for `what` needing `value` of limit `name`, naming the limit and its flag."""
        f = next(f for f in fields(self) if f.name == name)
        return error(f"{what}: {value} is over the server's limit of {getattr(self, name)} "
                     f"({f.metadata['help']}; `simdex serve {f.metadata['flag']} N` raises it)")

    def refuse_description(self, name: str, value, what: str) -> InvalidArgument:
        return self.refuse(name, value, what, InvalidArgument)


def flags() -> list[tuple[str, str, type, object, str]]:
    """(attribute, flag, type, default, help) of every limit, for the CLI's `serve` parser."""
    return [(f.name, f.metadata["flag"], type(f.default), f.default, f.metadata["help"]) for f in fields(Limits)]
