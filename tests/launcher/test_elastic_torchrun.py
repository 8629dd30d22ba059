"""Elastic torchrun (``torchrun --nnodes=1:2``, c10d rendezvous) with two real agents, "nodes" on
127.0.0.1 and 127.0.0.2. Mid-run the second agent and its trainer are SIGKILLed (a lost node):
the first agent restarts its trainer, which resumes at one rank from the newest checkpoint. A
third agent (127.0.0.3) then joins; the first agent stops its trainer (SIGTERM: it checkpoints
the step it is in, so nothing is replayed) and both start again at two ranks. The last run of
every step consumed exactly the global samples of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lavla.trainer.ports import free_port
from tests.conftest import read_jsonl

from lavla.launcher.slurm import ELASTIC_AGENT_ENV

from .conftest import REPO, kill_tree
from .elastic_checks import assert_elastic_run_matches

pytestmark = pytest.mark.slow

STEPS = 36
EVERY = 4


def _agent(ip: str, port: int, args: list[str], log: Path, host: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=elastic-test",
           f"--rdzv-conf=is_host={str(host).lower()},last_call_timeout=5,join_timeout=300",
           "--max-restarts=4", "--monitor-interval=0.5", f"--local-addr={ip}",
           str(REPO / "launcher" / "pretrain.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "LAVLA_FAULTS": "slow_steps:400",
           **ELASTIC_AGENT_ENV}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_jsonl(path) if path.is_file() else []


def test_torchrun_shrinks_on_node_loss_and_grows_back(tmp_path: Path, tiny_world_args: list[str],
                                                      elastic_reference: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*tiny_world_args, f"--run.dir={run_dir}", f"--trainer.max_steps={STEPS}", "--data.log_sample_ids=true",
            f"--checkpoint.every_steps={EVERY}", "--checkpoint.keep_last=2", "--optim.warmup_steps=0",
            "--resume=auto", "--trainer.batch_layout=nearest"]
    port = free_port()
    logs = {name: tmp_path / f"agent_{name}.log" for name in "abc"}
    agents = {"a": _agent("127.0.0.1", port, args, logs["a"], host=True)}
    time.sleep(1)  # the host agent opens the rendezvous store
    agents["b"] = _agent("127.0.0.2", port, args, logs["b"], host=False)

    def wait(what: str, cond, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            detail = "\n".join(f"--- {n}\n{p.read_text()[-4000:]}" for n, p in logs.items() if p.exists())
            assert agents["a"].poll() is None, f"agent a exited while waiting for {what}\n{detail}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{detail}"
            time.sleep(0.25)

    try:
        wait("2 ranks past a checkpoint",
             lambda: any(r["world_size"] == 2 and r["step"] > EVERY + 1 for r in _records(run_dir)), 400)
        t_loss = time.time()
        kill_tree(agents["b"])  # the agent and its trainer: a lost node
        wait("training at 1 rank", lambda: any(r["world_size"] == 1 for r in _records(run_dir)), 300)
        t_first_small = next(r["time"] for r in _records(run_dir) if r["world_size"] == 1)

        agents["c"] = _agent("127.0.0.3", port, args, logs["c"], host=False)
        wait("training at 2 ranks again",
             lambda: any(r["world_size"] == 2 and r["time"] > t_first_small for r in _records(run_dir)), 300)
        rc_a, rc_c = agents["a"].wait(timeout=500), agents["c"].wait(timeout=120)
    finally:
        for p in agents.values():
            if p.poll() is None:
                kill_tree(p)
    out = logs["a"].read_text()
    assert rc_a == 0 and rc_c == 0, out[-8000:]

    events = assert_elastic_run_matches(run_dir, elastic_reference, STEPS, EVERY)
    sizes = [(e["resize/old_world_size"], e["resize/new_world_size"]) for e in events]
    assert sizes == [(2, 1), (1, 2)], events
    # Growing is a planned stop: the trainers checkpoint the step they are in, nothing is replayed.
    assert events[1]["resize/steps_replayed"] == 0, events
    print(f"node loss -> first step at 1 rank: {t_first_small - t_loss:.1f} s; resize events: {events}")
