"""Raw images and DICOM through Upsert, Search, Embed and Predict, over gRPC and in-process (the `client` fixture)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from simdex.clients import FailedPrecondition, InvalidArgument

EMB = "densenet-bc-random"  # small (32x32 input) and random weights: fast, and nothing to download


def png(seed: int, size=(40, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # a coarse pattern, upsampled: distinct images
    im = Image.fromarray(base).resize(size[::-1], Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def dicom_files() -> list[Path]:
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    return [folder / n for n in ("CT_small.dcm", "MR_small.dcm") if (folder / n).exists()]


IMAGES = [png(i) for i in range(12)]
IDS = [f"img-{i}" for i in range(12)]


@pytest.fixture
def scans(client):
    info = client.create_collection("scans", 0, metric="cosine", embedder=EMB)
    assert info.dim == 342 and info.embedder == EMB and info.embedder_fingerprint == ""
    return client


def test_upsert_images_then_search_finds_each_first(scans):
    c = scans
    assert c.upsert("scans", IDS, images=IMAGES, metadata=[{"i": i} for i in range(12)]) == 12
    info = c.get_collection("scans")
    assert info.count == 12 and info.embedder_fingerprint.startswith("sha256:")
    res = c.search("scans", images=IMAGES[:5], k=3, include_metadata=True)
    assert [r[0] for r in res.ids] == IDS[:5]
    assert [m[0]["i"] for m in res.metadata] == list(range(5))
    assert res.distances[:, 0] == pytest.approx(1.0, abs=1e-4)


def test_embed_matches_stored_vectors_and_the_local_model(scans):
    from simdex.embedder import registry
    from simdex.embedder.decode import decode_image

    c = scans
    x = c.embed(EMB, images=IMAGES[:4])
    assert x.shape == (4, 342) and x.dtype == np.float32
    local = registry.load(EMB).embed_images([decode_image(b)[0].rgb for b in IMAGES[:4]])
    np.testing.assert_allclose(x, local, rtol=1e-4, atol=1e-5)
    c.upsert("scans", IDS[:4], images=IMAGES[:4])
    stored = np.stack([it.vector for it in c.get("scans", IDS[:4])])
    np.testing.assert_allclose(stored, x, rtol=1e-4, atol=1e-5)


def test_a_corrupt_image_rejects_the_whole_upsert_naming_it(scans):
    c = scans
    c.upsert("scans", ["keep"], images=[IMAGES[0]])
    bad = IMAGES[1:4] + [IMAGES[4][:60]] + IMAGES[5:7]  # item 3 is a truncated PNG
    with pytest.raises(InvalidArgument) as e:
        c.upsert("scans", IDS[1:7], images=bad)
    assert "images[3]" in e.value.message and "img-4" in e.value.message
    assert c.count("scans") == 1
    assert [it.id for it in c.get("scans", IDS[1:7] + ["keep"], ignore_missing=True)] == ["keep"]


def test_vectors_into_an_embedder_collection_need_the_matching_fingerprint(scans):
    c = scans
    c.upsert("scans", ["a"], images=[IMAGES[0]])
    fp = c.get_collection("scans").embedder_fingerprint
    x = c.embed(EMB, images=[IMAGES[1]])
    with pytest.raises(FailedPrecondition, match="embedder_fingerprint"):
        c.upsert("scans", ["b"], x)
    with pytest.raises(FailedPrecondition, match="do not mix"):
        c.upsert("scans", ["b"], x, embedder_fingerprint="sha256:" + "0" * 32)
    assert c.upsert("scans", ["b"], x, embedder_fingerprint=fp) == 1
    assert c.count("scans") == 2


def test_raw_inputs_into_a_plain_collection_are_refused(client):
    client.create_collection("plain", 342)
    with pytest.raises(FailedPrecondition, match="plain vectors"):
        client.upsert("plain", ["a"], images=[IMAGES[0]])
    with pytest.raises(FailedPrecondition, match="plain vectors"):
        client.search("plain", images=[IMAGES[0]], k=1)


def test_dicom_upsert_keeps_only_allow_listed_tags(scans):
    files = dicom_files()
    if not files:
        pytest.skip("pydicom's test files are not installed")
    c = scans
    ids = [f.stem for f in files]
    c.upsert("scans", ids, images=[f.read_bytes() for f in files], metadata=[{"site": "a"}] * len(files))
    items = c.get("scans", ids)
    for it in items:
        assert it.metadata["site"] == "a" and it.metadata["Modality"] in ("CT", "MR")
        text = json.dumps(it.metadata)
        for banned in ("PatientName", "PatientID", "PatientBirthDate", "CompressedSamples", "Patient"):
            assert banned not in text
    res = c.search("scans", images=[files[0].read_bytes()], k=1)
    assert res.ids[0] == [ids[0]]


def test_range_search_with_an_image(scans):
    c = scans
    c.upsert("scans", IDS, images=IMAGES)
    res = c.search("scans", images=[IMAGES[2]], radius=0.999)
    assert res.ids[0][0] == IDS[2]


def test_create_with_an_embedder_checks_dim_and_weights(client, tmp_path, monkeypatch):
    from simdex.embedder import registry

    with pytest.raises(InvalidArgument, match="does not match embedder"):
        client.create_collection("x", 128, embedder=EMB)
    with pytest.raises(InvalidArgument, match="not registered"):
        client.create_collection("x", 0, embedder="nope")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(FailedPrecondition, match="vgg16-397923af.pth"):
        client.create_collection("x", 0, embedder="vgg16-fc6")
    names = {e.name: e for e in client.list_embedders()}
    assert set(names) == {s.name for s in registry.specs()}
    assert names["vgg16-fc6"].dim == 4096 and names[EMB].weights_present


def test_predict_with_images_through_a_head(scans):
    c = scans
    c.upsert("scans", IDS, images=IMAGES, metadata=[{"label": i % 2} for i in range(12)])
    c.train_head("scans", "parity", label_field="label", test_fraction=0.25)
    p = c.predict("parity", images=IMAGES[:3])
    assert len(p.labels) == 3 and p.probabilities.shape == (3, 2)
    by_id = c.predict("parity", ids=IDS[:3])
    np.testing.assert_allclose(p.probabilities, by_id.probabilities, rtol=1e-4, atol=1e-5)


def test_sentences_through_the_translator_encoder_and_translate(client):
    """A text collection on `seq2seq-encoder` (the shipped question translator's encoder), and the Translate RPC."""
    from simdex.embedder.seq2seq.corpora import bundled_questions

    src = [fr for fr, _ in bundled_questions("fr-en")[:20]]
    client.create_collection("questions", 0, metric="cosine", embedder="seq2seq-encoder")
    client.upsert("questions", [f"q{i}" for i in range(20)], texts=src)
    res = client.search("questions", texts=src[:5], k=1)
    assert [r[0] for r in res.ids] == [f"q{i}" for i in range(5)]
    out = client.translate(["quelle est la population du canada ?"], model="questions-fr-en", beam=5)
    assert out == ["what is the population of canada?"]
    with pytest.raises(InvalidArgument, match="shipped"):
        client.translate(["x"], model="/etc/passwd")
    with pytest.raises(InvalidArgument, match="texts"):
        client.upsert("questions", ["a"], images=[IMAGES[0]])
