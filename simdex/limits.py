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
    max_upsert_mb: float = _limit(
        1024.0, "--max-upsert-mb", "MB of payload one Upsert stream may hold before it is committed")
    max_decoded_mpixels: float = _limit(
        400.0, "--max-decoded-mpixels", "megapixels one request may decode from images and DICOM frames")
    max_dicom_mb: float = _limit(
        512.0, "--max-dicom-mb", "MB a DICOM file may take once inflated (deflate transfer syntax)")
    max_index_bytes_per_vector: int = _limit(
        65_536, "--max-index-bytes-per-vector",
        "estimated FAISS memory per vector an index description may need (e.g. HNSW100000 needs ~760 KB)")

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
