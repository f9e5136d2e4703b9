"""Raw items (encoded images, DICOM, sentences) -> vectors with one named embedder.

Images: every header is read and the request is checked against the decoding budget first (`decode.admit`), so an
item that is not an image, or one too large, fails the request before any pixel is decoded; then the frames are
decoded one at a time, each preprocessed as it comes and embedded in batches, so a request holds one decoded image
and one batch of model inputs, never all its decoded images. Nothing is written here: a frame whose pixel data
turns out corrupt fails the request as a whole, after the frames before it were embedded for nothing."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from simdex.errors import InvalidArgument
from simdex.limits import Limits

MAX_TEXT_CHARS = 10_000


@dataclass
class Embedded:
    """`vectors` (rows, dim) float32; row r comes from input `item_index[r]`, frame `frame_index[r]`, and carries
    `metadata[r]` (the input's allow-listed DICOM tags, {} for other inputs)."""
    vectors: np.ndarray
    fingerprint: str
    item_index: np.ndarray
    frame_index: np.ndarray
    metadata: list[dict] = field(default_factory=list)


def item_label(kind: str, i: int, id_: str | None = None) -> str:
    """"images[3] (id 'scan-7')": how errors name input `i` of a request (its id when it has one)."""
    return f"{kind}[{i}]" if id_ is None else f"{kind}[{i}] (id {id_!r})"


def without_label(message: str, label: str) -> str:
    """`message` without the "LABEL: " that an error about one input starts with: for reports that name the
    input already (the batch indexer's error report, by id and path)."""
    return message.removeprefix(f"{label}: ")


def labels_for(kind: str, n: int, ids: Sequence[str] | None = None) -> list[str]:
    """item_label of each of `n` inputs."""
    if ids:
        return [item_label(kind, i, v) for i, v in enumerate(ids)]
    return [item_label(kind, i) for i in range(n)]


def embed_raw(emb, images: Sequence[bytes] = (), texts: Sequence[str] = (), ids: Sequence[str] | None = None,
              all_frames: bool = False, limits: Limits | None = None) -> Embedded:
    """Embed `images` (encoded image or DICOM bytes) or `texts` with the loaded embedder `emb`, images within the
    decoding budget of `limits` (ResourceExhausted naming the limit otherwise; default Limits()).

    An error about one input (bytes that do not decode, an empty text, the image that takes the request past the
    budget) is raised with `err.item` = its index; errors about the request as a whole (wrong modality) have
    `err.item` None."""
    images, texts = list(images), list(texts)
    if bool(images) == bool(texts):
        raise InvalidArgument("give either images or texts (one kind of raw input per request)")
    if images:
        if emb.modality != "image":
            raise InvalidArgument(f"embedder {emb.name!r} embeds {emb.modality}s; images were sent")
        from simdex.embedder.decode import iter_decoded  # noqa: PLC0415 - pydicom and Pillow load on demand

        rows: list[tuple[int, int, dict]] = []

        def frames():
            for i, d in iter_decoded(images, labels_for("images", len(images), ids), all_frames, limits):
                rows.append((i, d.frame, dict(d.metadata)))
                yield d.rgb
                del d  # one decoded frame at a time: this one goes before the next is decoded

        x = emb.embed_frames(frames())
        return Embedded(x, emb.fingerprint, np.array([r[0] for r in rows], np.int64),
                        np.array([r[1] for r in rows], np.int64), [r[2] for r in rows])
    if emb.modality != "text":
        raise InvalidArgument(f"embedder {emb.name!r} embeds {emb.modality}s; texts were sent")
    for i, (label, t) in enumerate(zip(labels_for("texts", len(texts), ids), texts)):
        if not isinstance(t, str) or not t.strip():
            raise InvalidArgument(f"{label}: empty text", item=i)
        if len(t) > MAX_TEXT_CHARS:
            raise InvalidArgument(f"{label}: text longer than {MAX_TEXT_CHARS} characters", item=i)
    x = emb.embed_texts(texts)
    n = len(texts)
    return Embedded(x, emb.fingerprint, np.arange(n), np.zeros(n, np.int64), [{} for _ in range(n)])
