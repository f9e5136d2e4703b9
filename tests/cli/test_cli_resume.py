"""`simdex upsert --resume` continues an interrupted upload: rows stored with the same content are skipped."""
import json

import numpy as np

from simdex.cli import main as cli


def test_resume_skips_what_is_stored_and_writes_what_changed(server, remote, tmp_path, capsys):
    rng = np.random.default_rng(16)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(f"u{i}" for i in range(1000)))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"i": i, "tag": "é"}) for i in range(1000)))
    remote.create_collection("up", dim=8)
    remote.upsert("up", [f"u{i}" for i in range(300)], x[:300], [{"i": i, "tag": "é"} for i in range(300)])
    remote.upsert("up", ["u5"], x[5:6] + 1, [{"i": 5, "tag": "é"}])  # stored, but with other content
    seq_before = remote.get_collection("up").seq
    argv = ["upsert", "up", str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.txt"),
            "--metadata", str(tmp_path / "m.jsonl"), "--chunk", "256", "--resume", "--target", server.target]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == {"upserted": 701, "skipped": 299}
    assert remote.count("up") == 1000
    np.testing.assert_array_equal(remote.get("up", ["u5"])[0].vector, x[5])
    assert remote.get_collection("up").seq == seq_before + 4  # one transaction per chunk that had work
    assert [it.id for it in remote.get("up", ["u1", "nope", "u999"], ignore_missing=True)] == ["u1", "u999"]
