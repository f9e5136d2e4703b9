"""scikit-learn's own test_mean_shift.py, as installed in this environment, run against simdex's classes.

The test file is copied with only its import line changed (sklearn.cluster -> simdex.estimators.meanshift), then run
by pytest in a child process with scikit-learn's conftest (its global_dtype and global_random_seed fixtures) and
SKLEARN_RUN_FLOAT32_TESTS=1, so that the float32 variants run too. Every collected test must pass: none skipped.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import sklearn

SOURCE = Path(sklearn.__file__).parent / "cluster" / "tests" / "test_mean_shift.py"
IMPORT = re.compile(r"^from sklearn\.cluster import (.*)$", re.MULTILINE)


def test_scikit_learns_mean_shift_tests_pass_against_simdex(tmp_path):
    text = SOURCE.read_text()
    names = {n.strip() for m in IMPORT.finditer(text) for n in m.group(1).split(",")}
    assert names == {"MeanShift", "estimate_bandwidth", "get_bin_seeds", "mean_shift"}, names
    patched = IMPORT.sub(r"from simdex.estimators.meanshift import \1", text)
    assert "sklearn.cluster" not in patched   # nothing else reaches scikit-learn's own mean shift
    (tmp_path / "test_mean_shift_simdex.py").write_text(patched)
    env = {**os.environ, "SKLEARN_RUN_FLOAT32_TESTS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p",
                          "sklearn.conftest", "test_mean_shift_simdex.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    summary = out.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 22 and not re.search(r"failed|skipped|error", summary), summary
