"""The generated batch script driving the real trainer under the fake SLURM (CPU, gloo):

* preemption: USR1 mid-run -> checkpoint -> requeue -> resume, with exactly the samples and
  losses of an uninterrupted run;
* two "nodes" (127.0.0.1 and 127.0.0.2, 2 ranks each, one DeepSpeed launcher per node) sharing
  one Ray data service (head on node 0, worker on node 1), with the global sample sequence of a
  single-node run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import read_jsonl

from .conftest import STEPS, FakeSlurm, free_port, kill_matching, samples

pytestmark = pytest.mark.slow


def _global_batches(run_dir: Path, world: int) -> dict[int, list[int]]:
    """Step -> sorted sample ids consumed by all ranks together."""
    out: dict[int, list[int]] = {}
    for rank in range(world):
        for step, ids in samples(run_dir, rank):
            out.setdefault(step, []).extend(ids)
    return {step: sorted(ids) for step, ids in out.items()}


def _wait_for_step(run_dir: Path, step: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "samples.rank0.jsonl"
    while not (path.exists() and any(r["step"] >= step for r in read_jsonl(path))):
        assert time.monotonic() < deadline, f"no step {step} after {timeout}s"
        time.sleep(0.2)


def _tiny_overrides(tiny_world_args: list[str]) -> tuple[str, list[str]]:
    """(config path, the other overrides): launcher.slurm takes the recipe as its own --config."""
    assert tiny_world_args[0] == "--config"
    return tiny_world_args[1], tiny_world_args[2:]


def test_usr1_checkpoints_requeues_and_resumes_exactly(fake_slurm: FakeSlurm, tmp_path: Path, reference: Path,
                                                       tiny_world_args: list[str]) -> None:
    config, overrides = _tiny_overrides(tiny_world_args)
    run_dir = tmp_path / "run"
    env = fake_slurm.env()
    job = fake_slurm.submit(["--config", config, "--nodes", "1", "--gpus-per-node", "2", "--run-dir", str(run_dir),
                             "--master-port", str(free_port()), "--", *overrides, f"--trainer.max_steps={STEPS}",
                             "--data.log_sample_ids=true", "--checkpoint.every_steps=0"], env)
    _wait_for_step(run_dir, 2, timeout=300)
    fake_slurm.scancel_batch(job, "USR1", env)  # what --signal=B:USR1@grace does before the time limit
    result = fake_slurm.wait(job, timeout=400)
    log = (run_dir / "slurm" / f"lavla-run-{job}.out").read_text()
    assert result == {"rc": 0, "restarts": 1}, log[-5000:]
    assert "requeueing job" in log and "(restart 1)" in log

    # The first start stopped early with a checkpoint; the requeued one resumed from it.
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and "step_0000000" in resumed[0], log[-5000:]
    preempt_step = int(resumed[0].split("step_")[1][:8])
    assert 2 <= preempt_step < STEPS

    # Same samples on every rank, and the same losses, as the uninterrupted run.
    for rank in (0, 1):
        assert samples(run_dir, rank) == samples(reference, rank)
    ref_loss = {r["step"]: r["loss"] for r in read_jsonl(reference / "metrics.jsonl")}
    for r in records:
        assert r["loss"] == pytest.approx(ref_loss[r["step"]], rel=1e-5, abs=1e-6), r["step"]


def test_two_nodes_share_one_ray_data_service(fake_slurm: FakeSlurm, tmp_path: Path, reference: Path,
                                              tiny_world_args: list[str]) -> None:
    pytest.importorskip("ray")
    fake_slurm.nodes = ["127.0.0.1", "127.0.0.2"]
    config, overrides = _tiny_overrides(tiny_world_args)
    run_dir = tmp_path / "run"
    steps = 3
    # Both Ray nodes live on this machine: every port they would share gets a private value.
    ray_args = (f"--dashboard-port={free_port()} --ray-client-server-port={free_port()} "
                "--dashboard-agent-listen-port=0 --min-worker-port=0 --max-worker-port=0 "
                f"--object-store-memory={100 * 1024 * 1024}")
    env = fake_slurm.env()
    env.pop("RAY_AUTH_MODE", None)  # the script chooses (token auth, with a per-job token)
    job = fake_slurm.submit(["--config", config, "--nodes", "2", "--gpus-per-node", "2", "--run-dir", str(run_dir),
                             "--master-port", str(free_port()), "--ray-port", str(free_port()),
                             "--ray-start-args", ray_args, "--", *overrides, f"--trainer.max_steps={steps}",
                             "--trainer.micro_batch_size=2", "--data.num_workers=2", "--data.log_sample_ids=true",
                             "--checkpoint.every_steps=0"], env)
    try:
        result = fake_slurm.wait(job, timeout=500)
        log = (run_dir / "slurm" / f"lavla-run-{job}.out").read_text()
        assert result == {"rc": 0, "restarts": 0}, log[-6000:]
    finally:
        kill_matching(f"/tmp/lavla-ray-{job}")
        shutil.rmtree(f"/tmp/lavla-ray-{job}", ignore_errors=True)

    assert (run_dir / "slurm" / f"hostfile-{job}").read_text() == "127.0.0.1 slots=2\n127.0.0.2 slots=2\n"
    assert "Ray data service cluster up at 127.0.0.1:" in log
    assert "2 decoders on" in log  # one service: created by rank 0, attached to by all four ranks
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["world_size"] == 4
    state = json.loads((run_dir / "checkpoints" / f"step_{steps:08d}" / "trainer_state.json").read_text())
    assert state["world_size"] == 4
    # 4 ranks on 2 nodes consume the same global batches as 2 ranks on one node.
    multi, single = _global_batches(run_dir, 4), _global_batches(reference, 2)
    assert multi == {s: single[s] for s in range(1, steps + 1)}
    assert multi[1] == list(range(8))
