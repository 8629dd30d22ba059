"""``python -m lavla.data_service.benchmarks.service_bench`` runs standalone (generates its world) and reports the
service against the tf.data reference, which runs in its own child process."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
pytest.importorskip("ray")


def test_service_bench_runs_standalone() -> None:
    with_tf = importlib.util.find_spec("tensorflow_datasets") is not None
    cmd = [sys.executable, "-m", "lavla.data_service.benchmarks.reader_bench", "--service", "--episodes", "6", "--episode-length", "12",
           "--source-size", "32", "--size", "32", "--batch", "8", "--seconds", "0.5", "--warmup", "1",
           "--workers", "1", "--skip", "inprocess" if with_tf else "inprocess,tfdata"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "generated 6 synthetic episodes" in out and "service x1" in out and "peak RSS" in out
    if with_tf:
        assert "tf.data (OpenVLA recipe" in out and "service x1 / tf.data:" in out
