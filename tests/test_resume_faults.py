"""Crash and resume with real 2-rank DeepSpeed jobs on CPU: SIGKILL during a checkpoint save and
mid-training, ``--resume=auto`` reproducing the uninterrupted run exactly, and 2 -> 1 rank resume
through a universal checkpoint that continues the same global sample sequence."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.checkpoint_helpers import fp32_params
from tests.conftest import REPO, assert_no_shm_leak, free_port, read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow

STEPS = 6


def _base(tiny_world_args: list[str]) -> list[str]:
    return [*tiny_world_args, "--data.log_sample_ids=true", "--optim.warmup_steps=0", "--checkpoint.every_steps=2",
            "--checkpoint.keep_last=3", f"--trainer.max_steps={STEPS}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_world_args):
    """The uninterrupted 2-rank run: checkpoints at steps 2, 4, 6."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_deepspeed([*_base(tiny_world_args), f"--run.dir={run_dir}"], num_ranks=2)
    return run_dir


def _losses(run_dir) -> dict[int, dict]:
    """The last record of each step (a crashed attempt's records are superseded by the resumed run's)."""
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}


def _sample_ids(run_dir, rank: int) -> dict[tuple[int, int], list[int]]:
    return {(r["step"], r["micro"]): r["sample_ids"] for r in read_jsonl(run_dir / f"samples.rank{rank}.jsonl")}


def _complete(run_dir) -> list[str]:
    return sorted(p.parent.name for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))


def test_sigkill_during_save_and_mid_training_then_resume_matches_uninterrupted(tmp_path, tiny_world_args, reference):
    run_dir = tmp_path / "run"
    args = [*_base(tiny_world_args), f"--run.dir={run_dir}"]

    # 1. Killed while saving step 4: rank files written, COMPLETE not yet. Step 4 must stay invisible.
    proc = run_deepspeed(args, num_ranks=2, env={"LAVLA_FAULTS": "kill_in_save:4"}, check=False)
    assert proc.returncode != 0
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step_00000004").is_dir() and _complete(run_dir) == ["step_00000002"]
    assert (ckpts / "latest").read_text() == "step_00000002"

    # 2. Resume: continues from step 2 (not the half-written 4), then dies mid-training in step 6.
    proc = run_deepspeed([*args, "--resume=auto"], num_ranks=2, env={"LAVLA_FAULTS": "kill_at_step:6"}, check=False)
    assert proc.returncode != 0
    assert "step_00000002 (step 2)" in proc.stdout + proc.stderr
    assert _complete(run_dir) == ["step_00000002", "step_00000004"]

    # 3. Resume again: from step 4 to the end.
    proc = run_deepspeed([*args, "--resume=auto"], num_ranks=2)
    assert "step_00000004 (step 4)" in proc.stdout + proc.stderr
    assert (ckpts / "latest").read_text() == "step_00000006"

    ref, got = _losses(reference), _losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        # Same world size, restored RNG and data position. Equal up to float32 rounding: the
        # first backward of a fresh DeepSpeed process reduces gradients in a slightly different
        # order (its grad norm differs in the 14th digit), which then compounds to ~3e-6.
        for key in ("loss", "loss/flow", "loss/align", "loss/lam"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=1e-5), (step, key)
        assert got[step]["consumed_samples"] == ref[step]["consumed_samples"] == 8 * step
    for rank in (0, 1):
        assert _sample_ids(run_dir, rank) == _sample_ids(reference, rank)


def test_convert_checkpoint_command_matches_the_zero_partitions(tmp_path, reference):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = tmp_path / "checkpoints" / "step_00000002"
    shutil.copytree(reference / "checkpoints" / "step_00000002", ckpt)
    proc = subprocess.run([sys.executable, "-m", "lavla.launcher.convert_checkpoint", str(ckpt)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ckpt / "UNIVERSAL_COMPLETE").is_file() and not list(ckpt.glob(".universal.tmp*"))
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    params = [p.name for p in (ckpt / "universal" / "zero").iterdir() if p.is_dir()]
    assert len(params) > 100
    for name in params:
        fp32 = torch.load(ckpt / "universal" / "zero" / name / "fp32.pt", weights_only=False)
        fp32 = fp32["param"] if isinstance(fp32, dict) else fp32
        assert torch.equal(fp32.reshape(consolidated[name].shape), consolidated[name]), name


def test_two_to_one_rank_resume_through_universal_checkpoint(tmp_path, tiny_world_args, reference):
    """Resume the 2-rank step-4 checkpoint on 1 rank. Step 5 is made non-finite so that it is
    skipped: the step-5 checkpoint then holds exactly the weights the universal load restored."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step_00000004", run_dir / "checkpoints" / "step_00000004")
    (run_dir / "checkpoints" / "latest").write_text("step_00000004")

    args = [*_base(tiny_world_args), f"--run.dir={run_dir}", "--resume=auto", "--checkpoint.every_steps=1",
            "--trainer.max_steps=7"]
    proc = run_deepspeed(args, num_ranks=1, env={"LAVLA_FAULTS": "nan_at_step:5"})
    out = proc.stdout + proc.stderr
    assert "step_00000004 to a universal checkpoint" in out  # converted once, automatically
    assert "world size changed 2 -> 1" in out and "reseeded from (seed=0, step=4, rank)" in out
    state = json.loads((run_dir / "checkpoints" / "step_00000007" / "trainer_state.json").read_text())
    assert state["world_size"] == 1 and state["data"]["consumed"] == 8 * 7

    # Weights: bit-exact through ds_to_universal and the 1-rank load.
    restored = fp32_params(run_dir / "checkpoints" / "step_00000005")
    saved = fp32_params(reference / "checkpoints" / "step_00000004")
    assert restored.keys() == saved.keys() and all(torch.equal(restored[k], saved[k]) for k in saved)

    # The data position is global: one rank now consumes exactly what the two ranks would have.
    mine = _sample_ids(run_dir, 0)
    for step in (5, 6):
        expected = sorted(i for rank in (0, 1) for (s, _), ids in _sample_ids(reference, rank).items() if s == step
                          for i in ids)
        got = sorted(i for (s, _), ids in mine.items() if s == step for i in ids)
        assert got == expected == list(range(8 * (step - 1), 8 * step))

    # Training continues from the checkpoint's loss level (optimizer state included), no jump
    # back towards the initial loss.
    ref, got = _losses(reference), _losses(run_dir)
    assert sorted(got) == [5, 6, 7] and got[5]["nonfinite/skipped_steps"] == 1
    assert got[6]["loss"] == pytest.approx(ref[6]["loss"], rel=0.15)
    assert got[6]["loss"] < 1.25 * ref[4]["loss"] and got[7]["loss"] < 1.25 * ref[4]["loss"]


def test_sigterm_writes_a_final_checkpoint_and_exits_cleanly(tmp_path, tiny_world_args):
    """SIGTERM to the whole job (as SLURM sends it): every rank saves the same step and exits.
    (The model is built under deepspeed.zero.Init here, which a 2-rank run needs to exercise.)"""
    run_dir = tmp_path / "run"
    port = free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
           str(REPO / "launcher" / "pretrain.py"), *tiny_world_args, f"--run.dir={run_dir}",
           "--trainer.max_steps=500", "--checkpoint.every_steps=0", "--trainer.zero_init=true"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.is_file() and len(read_jsonl(metrics)) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)  # returns once every rank has closed its output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    step = read_jsonl(metrics)[-1]["step"]
    assert 2 <= step < 500
    assert f"checkpointed step {step} after a preemption signal" in out and f"done: step {step} (preempted)" in out
    latest = (run_dir / "checkpoints" / "latest").read_text()
    assert latest == f"step_{step:08d}" and (run_dir / "checkpoints" / latest / "COMPLETE").is_file()
    assert "Traceback" not in out
    assert_no_shm_leak(port)
