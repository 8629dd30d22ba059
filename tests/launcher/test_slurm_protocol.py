"""The generated batch script's protocol under the fake SLURM, with a stub in place of DeepSpeed:
hostfile, rendezvous, one launcher per node, signal forwarding and the requeue decision.
Seconds per case; the real trainer under the same script is in test_slurm_e2e.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lavla.launcher.exit_codes import EXIT_PREEMPTED

from .conftest import REPO, STUB_BIN, FakeSlurm, free_port

NODES = ["nodeA", "nodeB"]


def _events(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def _wait_ready(log: Path, restart: int, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(e["event"] == "ready" and e["restart"] == restart for e in _events(log)) < n:
        assert time.monotonic() < deadline, _events(log)
        time.sleep(0.05)


def _submit(fs: FakeSlurm, tmp_path: Path, plan: list[str]) -> tuple[str, dict, Path, int]:
    fs.nodes = NODES
    fs.extra_path = [STUB_BIN]
    log = tmp_path / "stub.jsonl"
    env = fs.env(STUB_PLAN=json.dumps(plan), STUB_LOG=str(log))
    port = free_port()
    job = fs.submit(["--config", "configs/quickstart.yaml", "--nodes", "2", "--gpus-per-node", "2",
                     "--run-dir", str(tmp_path / "run"), "--master-port", str(port), "--",
                     "--trainer.max_steps=7"], env)
    return job, env, log, port


@pytest.mark.parametrize(
    ("plan", "signal", "restarts", "rc"),
    [
        (["exit:0"], None, 0, 0),  # finished: nothing to do
        ([f"wait:{EXIT_PREEMPTED}", "exit:0"], "USR1", 1, 0),  # preempted: checkpoint, requeue, finish
        (["wait:0", "exit:0"], "USR1", 1, 0),  # a trainer that exits 0 after USR1 is requeued too
        ([f"wait:{EXIT_PREEMPTED}"], "TERM", 0, EXIT_PREEMPTED),  # SLURM ends the job: no self-requeue
        (["exit:1"], None, 0, 1),  # a crash is not requeued
    ],
    ids=["finished", "preempted", "preempted-exit0", "terminated", "crashed"],
)
def test_requeue_decision(fake_slurm: FakeSlurm, tmp_path: Path, plan: list[str], signal: str | None,
                          restarts: int, rc: int) -> None:
    job, env, log, _ = _submit(fake_slurm, tmp_path, plan)
    if signal:
        _wait_ready(log, restart=0, n=2)
        fake_slurm.scancel_batch(job, signal, env)
    result = fake_slurm.wait(job, timeout=60)
    assert result == {"rc": rc, "restarts": restarts}, (tmp_path / "run" / "slurm").glob("*.out")
    exits = [e for e in _events(log) if e["event"] == "exit"]
    assert sorted((e["restart"], e["node_id"]) for e in exits) == [(r, n) for r in range(restarts + 1) for n in "01"]
    if signal:  # both nodes' trainers got the signal, forwarded through srun to the whole step
        assert all(e["signals"] and e["signals"][0] == signal for e in exits if e["restart"] == 0)


def test_launch_shape_hostfile_and_rendezvous(fake_slurm: FakeSlurm, tmp_path: Path) -> None:
    job, _, log, port = _submit(fake_slurm, tmp_path, ["exit:0"])
    assert fake_slurm.wait(job, timeout=60)["rc"] == 0
    slurm_dir = tmp_path / "run" / "slurm"
    hostfile = slurm_dir / f"hostfile-{job}"
    assert hostfile.read_text() == "nodeA slots=2\nnodeB slots=2\n"
    ready = sorted((e for e in _events(log) if e["event"] == "ready"), key=lambda e: e["node_id"])
    for node_rank, e in enumerate(ready):
        assert e["args"] == [
            f"--node_rank={node_rank}", "--no_ssh", f"--hostfile={hostfile}", "--master_addr=nodeA",
            f"--master_port={port}", "launcher/pretrain.py", "--config", "configs/quickstart.yaml", "--resume=auto",
            f"--run.dir={tmp_path / 'run'}", "--trainer.max_steps=7"]
        assert e["master"] == ["nodeA", str(port)]
        # The launchers ignore USR1 and TERM; the trainers they start inherit that until they
        # install their own handlers (the stub, like the trainer, does).
        assert e["usr1_ignored"] and e["term_ignored"]
    out = (slurm_dir / f"lavla-run-{job}.out").read_text()
    assert f"job {job} (restart 0) on nodeA,nodeB" in out and "training exited with code 0" in out


def test_signal_before_training_requeues_without_starting(fake_slurm: FakeSlurm, tmp_path: Path) -> None:
    """A notice during start-up (here: while the Ray head is awaited) skips training and requeues."""
    fake_slurm.nodes = ["nodeA"]
    fake_slurm.extra_path = [STUB_BIN, tmp_path / "bin"]
    (tmp_path / "bin").mkdir()
    ray = tmp_path / "bin" / "ray"  # a `ray` that takes a while to come up, and logs its calls
    ray.write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/ray.log\n"
                   "[[ $1 == start ]] && exec sleep 60\n"
                   f"[[ -e {tmp_path}/ray_up ]]\n")  # `ray status` fails until the test says the head is up
    ray.chmod(0o755)
    log = tmp_path / "stub.jsonl"
    env = fake_slurm.env(STUB_PLAN=json.dumps(["exit:0"]), STUB_LOG=str(log))
    job = fake_slurm.submit(["--config", "configs/quickstart.yaml", "--nodes", "1", "--gpus-per-node", "2",
                             "--run-dir", str(tmp_path / "run"), "--master-port", str(free_port()), "--",
                             "--data.num_workers=2"], env)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ray.log").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    fake_slurm.scancel_batch(job, "USR1", env)
    (tmp_path / "ray_up").touch()
    assert fake_slurm.wait(job, timeout=60) == {"rc": 0, "restarts": 1}
    events = _events(log)
    assert [e["restart"] for e in events if e["event"] == "exit"] == [1]  # never started before the requeue
    assert any("--data.ray_address=nodeA:" in a for a in events[-1]["args"])
    calls = (tmp_path / "ray.log").read_text()
    assert "start --head" in calls and "--num-gpus=0" in calls and "status --address=nodeA:" in calls


def test_bad_options_fail_before_submitting(tmp_path: Path) -> None:
    from lavla.launcher.slurm import main

    base = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--nodes", "1", "--gpus-per-node", "1",
            "--run-dir", str(tmp_path / "r"), "--dry-run"]
    assert main([*base, "--", "--resume=never"]) == 2
    assert main([*base, "--", "--trainer.max_stpes=3"]) == 2
    assert main([*base, "--time", "tomorrow"]) == 2
    assert main([*base, "--partition", "gpu\n#SBATCH --qos=x"]) == 2
    assert not (tmp_path / "r").exists()
    assert main(base) == 0 and (tmp_path / "r" / "slurm" / "job.sbatch").is_file()
