"""No silent hangs at start: a build lock left by a killed DeepSpeed op build, a taken rendezvous
port, and waits that say what they wait for."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lavla.trainer.jit_ops import prepare_shm_comm_op, remove_stale_build_lock
from lavla.trainer.ports import free_port, port_is_free
from lavla.trainer.waiting import report_while_waiting
from tests.conftest import REPO, assert_no_shm_leak

pytestmark = pytest.mark.slow


def test_report_while_waiting_names_what_it_waits_for() -> None:
    said: list[str] = []
    with report_while_waiting("the moon", every_s=0.1, emit=said.append):
        time.sleep(0.35)
    assert len(said) >= 2 and all(s.startswith("waiting for the moon (") for s in said), said
    quiet: list[str] = []
    with report_while_waiting("nothing", every_s=5, emit=quiet.append):
        pass
    assert quiet == []


def test_stale_lock_is_removed_and_a_live_build_is_waited_for(tmp_path: Path) -> None:
    build = tmp_path / "op"
    build.mkdir()
    lock = build / "lock"
    lock.touch()
    os.utime(lock, (time.time() - 60, time.time() - 60))
    assert remove_stale_build_lock(build) and not lock.exists()

    # A build in progress: a process working in the folder, which releases the lock when done.
    lock.touch()
    os.utime(lock, (time.time() - 60, time.time() - 60))
    builder = subprocess.Popen(["sh", "-c", "sleep 2; rm lock"], cwd=build)
    start = time.monotonic()
    try:
        assert remove_stale_build_lock(build, stale_after_s=0) is False
    finally:
        builder.wait(timeout=30)
    assert time.monotonic() - start > 1.5 and not lock.exists()


def _tiny_job(tmp_path: Path, port: int, ranks: int, args: list[str], env: dict | None = None
              ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port", str(port),
           str(REPO / "launcher" / "pretrain.py"), *args, f"--run.dir={tmp_path / 'run'}", "--trainer.max_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_stale_build_lock_does_not_stall_a_two_rank_job(tmp_path: Path, tiny_world_args) -> None:
    built = prepare_shm_comm_op()  # the suite's extension folder, with the op already built
    if built is None:
        pytest.skip("DeepSpeed's shm comm op is not used on this machine")
    # A private copy of the built op (mtimes kept, so nothing recompiles), where no other job looks.
    extensions = tmp_path / "torch_extensions"
    shutil.copytree(built, extensions / built.name, ignore=shutil.ignore_patterns("lock"))
    lock = extensions / built.name / "lock"
    lock.touch()  # what a build killed by Ctrl-C leaves behind
    os.utime(lock, (time.time() - 600, time.time() - 600))
    port = free_port()
    try:
        start = time.monotonic()
        proc = _tiny_job(tmp_path, port, 2, tiny_world_args, env={"TORCH_EXTENSIONS_DIR": str(extensions)})
        took = time.monotonic() - start
    finally:
        assert_no_shm_leak(port)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"removed a stale build lock {lock}" in proc.stdout + proc.stderr
    assert not lock.exists() and (tmp_path / "run" / "checkpoints" / "latest").exists()
    assert took < 180, f"the job took {took:.0f} s"  # it used to wait forever


def test_a_taken_port_stops_the_job_with_a_message_naming_master_port(tmp_path: Path, tiny_world_args) -> None:
    with socket.socket() as other_job:
        other_job.bind(("", 0))
        other_job.listen()
        port = other_job.getsockname()[1]
        assert not port_is_free(port) and free_port(port) != port
        proc = _tiny_job(tmp_path, port, 1, tiny_world_args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-4000:]
    assert f"rendezvous port {port}" in out and "--master_port" in out
    assert "Traceback" not in proc.stderr


def test_ports_cli_prints_the_default_or_a_free_port() -> None:
    run = [sys.executable, "-m", "lavla.trainer.ports"]
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        taken = s.getsockname()[1]
        proc = subprocess.run([*run, str(taken)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and int(proc.stdout) != taken and f"port {taken} is taken" in proc.stderr
    free = free_port()
    proc = subprocess.run([*run, str(free)], capture_output=True, text=True, timeout=60)
    assert int(proc.stdout) == free and proc.stderr == ""


def test_a_rendezvous_that_waits_says_for_whom(tmp_path: Path) -> None:
    """Rank 0 of a two-rank world whose rank 1 never comes: it reports instead of waiting in silence."""
    script = ("import lavla.trainer.waiting as w; w.REPORT_EVERY_S = 1.0\n"
              "from lavla.trainer.distributed import init_distributed; init_distributed()\n")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and not any("waiting for the rendezvous" in x for x in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    said = [x for x in lines if "waiting for the rendezvous" in x]
    assert said, "".join(lines)[-3000:]
    assert "of 2 ranks at 127.0.0.1" in said[0] and "this is rank 0" in said[0]
