"""Shared test helpers: launching real multi-rank DeepSpeed jobs on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lavla.trainer.ports import free_port

REPO = Path(__file__).resolve().parents[1]

# DeepSpeed's JIT-built ops go to a per-checkout directory: a build killed in another checkout (or
# by another job on the machine) cannot leave a lock that stalls this suite's jobs.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build DeepSpeed's CPU shared-memory comm op once, here, before any multi-rank test.

    DeepSpeed JIT-compiles it at the first ``init_distributed`` on a fresh machine (a minute on two
    cores). Left to the tests, the first multi-rank job pays that inside its own timeout, and a
    rank killed mid-build leaves torch's build lock behind so every later job waits on it forever.
    """
    import time

    session.config._shm_session_start = time.time()  # type: ignore[attr-defined]
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return
    from lavla.trainer.jit_ops import prepare_shm_comm_op

    try:
        prepare_shm_comm_op()
    except Exception as e:  # the first multi-rank test retries the build and reports it
        import warnings

        warnings.warn(f"pre-building DeepSpeed's shm comm op failed: {e}")


SHM_GLOB = "deepspeed_allreduce_buffer_*"
"""DeepSpeed's CPU shm-allreduce segments in /dev/shm (70 MB of RAM per rank)."""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A last guard against the leak that once filled CI's RAM: segments left by this session's
    jobs (older than a minute: a live job unlinks its own within seconds of starting) are removed
    and named, so a test launching DeepSpeed without ``trainer.distributed.init_distributed`` shows up."""
    import time

    shm = Path("/dev/shm")
    if not shm.is_dir():
        return
    start = getattr(session.config, "_shm_session_start", None)
    if start is None:
        return
    left = [f for f in shm.glob(SHM_GLOB) if start <= f.stat().st_mtime < time.time() - 60]
    for f in left:
        f.unlink(missing_ok=True)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = f"removed {len(left)} DeepSpeed shm segments left by this session's jobs: {sorted(f.name for f in left)[:6]}"
        if reporter is not None:
            reporter.write_line(msg, yellow=True)


def run_deepspeed(args: list[str], num_ranks: int, timeout: int = 600, env: dict | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus N launcher/pretrain.py ARGS`` on CPU, with a private port."""
    port = free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_ranks),
           "--master_port", str(port), str(REPO / "launcher" / "pretrain.py"), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"deepspeed run failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    assert_no_shm_leak(port)
    return proc


def assert_no_shm_leak(port: int) -> None:
    """DeepSpeed's CPU shm-allreduce segments (70 MB per rank, named after the master port) must not
    outlive the job that used ``port``; leaked ones are removed, then reported."""
    leaked = sorted(Path("/dev/shm").glob(f"{SHM_GLOB}_{port}_*"))
    for f in leaked:
        f.unlink(missing_ok=True)
    assert not leaked, f"the job left shared memory behind: {[f.name for f in leaked]}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_world_args(tmp_path_factory) -> list[str]:
    """Overrides that shrink the quickstart to a seconds-long job on a private synthetic dataset."""
    root = tmp_path_factory.mktemp("synthetic")
    return [
        "--config", str(REPO / "configs" / "quickstart.yaml"),
        f"--data.synthetic.root={root}",
        "--data.synthetic.train_episodes=8",
        "--data.synthetic.val_episodes=2",
        "--data.synthetic.episode_length=16",
        f"--data.datasets=[{{name: synthetic_world, path: {root}/synthetic_world/1.0.0, split: train, weight: 1.0}}]",
        "--trainer.global_batch_size=8",
        "--trainer.micro_batch_size=4",
        "--trainer.log_every=1",
        "--eval.every_steps=0",  # the quickstart evaluates at its last step; these jobs test other things
    ]
