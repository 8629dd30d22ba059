"""Elastic Ray Train (``launcher.ray_job --num-workers 1:2``) on a local cluster of real `ray start`
nodes: the head plus one node on 127.0.0.2. Mid-run that node's processes are SIGKILLed (raylet,
object store, its training worker); the job goes on with one rank, without operator action. A
node is then added back and the job grows to two ranks again. Over the whole run the last run of
every step consumed exactly the global samples of an uninterrupted run, only the steps after each
resumed checkpoint ran twice, and the loss continues from the checkpoints."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lavla.trainer.ports import free_port
from tests.conftest import read_jsonl

from .conftest import REPO, LocalRayCluster
from .elastic_checks import assert_elastic_run_matches

pytestmark = pytest.mark.slow
pytest.importorskip("ray.train", reason="launcher.ray_job needs ray[train] (pandas, tensorboardX)", exc_type=ImportError)

ONE_RANK = '{"trainer_slot": 1}'
"""Every node holds one trainer rank (as a GPU would), and the data service's decoder a spare CPU."""
STEPS = 36
EVERY = 4
"""Checkpoint cadence: at most this many steps are replayed per membership change."""


@pytest.fixture
def head_only() -> Iterator[LocalRayCluster]:
    temp = Path(tempfile.mkdtemp(prefix="lvray", dir="/tmp"))
    cluster = LocalRayCluster(temp_dir=temp, port=free_port())
    try:
        cluster.start(nodes=1, cpus_per_node=2, head_ip="127.0.0.1", resources=ONE_RANK)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(temp, ignore_errors=True)


def _wait(what: str, cond, driver: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert driver.poll() is None, f"driver exited ({driver.returncode}) while waiting for {what}:\n" + \
            log.read_text()[-8000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + log.read_text()[-8000:]
        time.sleep(0.25)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_jsonl(path) if path.is_file() else []


def test_ray_job_shrinks_on_node_loss_and_grows_back(head_only: LocalRayCluster, tmp_path: Path,
                                                     tiny_world_args: list[str], elastic_reference: Path) -> None:
    cluster = head_only
    node = cluster.add_node(cpus=2, resources=ONE_RANK)
    deadline = time.monotonic() + 120
    while cluster.alive_nodes() < 2:
        assert time.monotonic() < deadline, "the second node did not join"
        time.sleep(0.5)

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "lavla.launcher.ray_job", "--config", tiny_world_args[1],
           "--address", cluster.address, "--num-workers", "1:2", "--gpus-per-worker", "0",
           "--max-failures", "-1", "--resize-interval-s", "3", "--worker-resources", ONE_RANK, "--start-timeout-s", "20", "--",
           *tiny_world_args[2:], f"--run.dir={run_dir}", f"--trainer.max_steps={STEPS}", "--data.num_workers=1",
           "--data.log_sample_ids=true", f"--checkpoint.every_steps={EVERY}", "--checkpoint.keep_last=2",
           "--optim.warmup_steps=0"]
    log = tmp_path / "driver.log"
    # Slow steps keep the one-rank phase long enough for the new node to join before the run ends.
    env = {**cluster.env(), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "LAVLA_FAULTS": "slow_steps:700"}
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        _wait("2 ranks past a checkpoint",
              lambda: any(r["world_size"] == 2 and r["step"] > EVERY + 1 for r in _records(run_dir)), driver, log, 400)
        t_loss = time.time()
        assert cluster.kill_node(node) >= 2
        _wait("training at 1 rank", lambda: any(r["world_size"] == 1 for r in _records(run_dir)), driver, log, 300)
        t_first_small = next(r["time"] for r in _records(run_dir) if r["world_size"] == 1)

        cluster.add_node(cpus=2, ip="127.0.0.3", resources=ONE_RANK)
        _wait("training at 2 ranks again",
              lambda: any(r["world_size"] == 2 and r["time"] > t_first_small for r in _records(run_dir)),
              driver, log, 300)
        rc = driver.wait(timeout=500)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    out = log.read_text()
    assert rc == 0, out[-8000:]
    # One data service for the whole run (its decoders outlive the restarts), removed at the end.
    assert "removed the 1 decoder(s) of data service 'lavla-run-" in out, out[-3000:]

    events = assert_elastic_run_matches(run_dir, elastic_reference, STEPS, EVERY)
    sizes = [(e["resize/old_world_size"], e["resize/new_world_size"]) for e in events]
    assert sizes == [(2, 1), (1, 2)], events
    print(f"node loss -> first step at 1 rank: {t_first_small - t_loss:.1f} s; resize events: {events}")
