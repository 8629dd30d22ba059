"""``launcher.ray_job`` on a local 2-node Ray cluster (two `ray start` processes, CPU): 2 ranks
train with the data service's decoder on the same cluster; a killed rank makes Ray Train restart
the worker group, which resumes from the newest checkpoint and finishes with the samples of an
uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import read_jsonl

from .conftest import REPO, STEPS, LocalRayCluster, samples

pytestmark = pytest.mark.slow
pytest.importorskip("ray.train", reason="launcher.ray_job needs ray[train] (pandas, tensorboardX)", exc_type=ImportError)


def _train_workers(cluster: LocalRayCluster) -> list[psutil.Process]:
    """Ray Train worker processes of this cluster (children of its raylets)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd and str(cluster.temp_dir) in cmd:
            found += [c for c in p.children(recursive=True) if "RayTrainWorker" in " ".join(c.cmdline())]
    return found


def test_ray_job_trains_and_survives_a_killed_worker(ray_cluster: LocalRayCluster, tmp_path: Path,
                                                     tiny_world_args: list[str], reference: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "lavla.launcher.ray_job", "--config", tiny_world_args[1], "--address", ray_cluster.address,
           "--num-workers", "2", "--gpus-per-worker", "0", "--max-failures", "1", "--",
           *tiny_world_args[2:], f"--run.dir={run_dir}", f"--trainer.max_steps={STEPS}", "--data.num_workers=1",
           "--data.log_sample_ids=true", "--checkpoint.every_steps=2"]
    log = open(tmp_path / "driver.log", "w")
    env = {**ray_cluster.env(), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ckpt = run_dir / "checkpoints" / "step_00000002" / "COMPLETE"
        deadline = time.monotonic() + 400
        while not ckpt.exists():
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-6000:]
            assert time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[-6000:]
            time.sleep(0.2)
        workers = _train_workers(ray_cluster)
        assert len(workers) == 2, [w.cmdline() for w in workers]
        workers[-1].kill()  # a crash of one rank's process
        rc = driver.wait(timeout=500)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    out = (tmp_path / "driver.log").read_text()
    assert rc == 0, out[-8000:]
    assert "resumed from" in out, out[-8000:]
    resumed_at = int(out.split("resumed from")[1].split("step_")[1][:8])
    assert 2 <= resumed_at < STEPS

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert {r["step"] for r in records} == set(range(1, STEPS + 1)) and records[-1]["step"] == STEPS
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"
    # Steps the killed attempt ran past its last checkpoint were run again; the last run of each
    # step consumed exactly what the uninterrupted run did.
    for rank in (0, 1):
        last = dict(samples(run_dir, rank))
        assert sorted(last.items()) == samples(reference, rank)
