"""bench/gpu_suite.sh: on a CPU-only machine it runs scaled down and writes the same files, with
the provenance that GPU results need (device, date, commit, command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_suite_writes_results_with_provenance(tmp_path):
    env = {**os.environ, "RESULTS": str(tmp_path), "BENCH_COMMIT": "0123abcd", "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu_suite.sh", "kernels"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "codebook_lookup.json").read_text())
    assert record["git_commit"] == "0123abcd" and record["date"].startswith("20")
    assert record["command"].startswith("python -m lavla.kernels.bench")
    assert [r["k"] for r in record["results"]] == [8, 128, 1024]
    assert (tmp_path / "codebook_lookup.log").read_text().strip()


def test_unknown_step_is_refused(tmp_path):
    proc = subprocess.run(["bash", "bench/gpu_suite.sh", "mfuu"], cwd=REPO, env={**os.environ, "RESULTS": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown step mfuu" in proc.stdout
