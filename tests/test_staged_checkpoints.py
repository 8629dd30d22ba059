"""Staged checkpoints (``checkpoint.staging_dir``) with real 2-rank DeepSpeed jobs on CPU: the
ranks write locally and a background upload makes the checkpoint complete; ranks killed during
the upload leave it invisible, and the resumed run ends exactly where an unstaged one does."""

from __future__ import annotations

import json

import pytest
import torch

from tests.checkpoint_helpers import fp32_params
from tests.conftest import read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow

STEPS = 6


def _args(tiny_world_args: list[str], run_dir, *extra: str) -> list[str]:
    return [*tiny_world_args, "--optim.warmup_steps=0", "--checkpoint.every_steps=2", "--checkpoint.keep_last=3",
            f"--trainer.max_steps={STEPS}", f"--run.dir={run_dir}", *extra]


def _complete(run_dir) -> list[str]:
    return sorted(p.parent.name for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))


def test_staged_checkpoints_survive_a_kill_mid_upload_and_resume_exactly(tmp_path, tiny_world_args):
    reference = tmp_path / "reference"
    run_deepspeed(_args(tiny_world_args, reference), num_ranks=2)

    run_dir, staging = tmp_path / "run", tmp_path / "node_local"
    staged = _args(tiny_world_args, run_dir, f"--checkpoint.staging_dir={staging}")
    # 1. Every rank dies after copying its part of step 4 and before reporting it: step 4 exists
    #    in the run dir with all its files, but never becomes a checkpoint.
    proc = run_deepspeed(staged, num_ranks=2, env={"LAVLA_FAULTS": "kill_in_upload:4"}, check=False)
    assert proc.returncode != 0
    ckpts = run_dir / "checkpoints"
    assert _complete(run_dir) == ["step_00000002"] and (ckpts / "latest").read_text() == "step_00000002"
    assert (ckpts / "step_00000004" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    assert len(list((ckpts / "step_00000002").glob(".parts/*"))) == 2  # both ranks reported their part

    # 2. Resume: from step 2 (not the half-uploaded 4) to the end, staged again.
    proc = run_deepspeed([*staged, "--resume=auto"], num_ranks=2)
    assert "step_00000002 (step 2)" in proc.stdout + proc.stderr
    assert _complete(run_dir) == ["step_00000002", "step_00000004", "step_00000006"]
    assert (ckpts / "latest").read_text() == "step_00000006"
    final = ckpts / "step_00000006"
    assert sorted(p.name for p in final.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in (reference / "checkpoints" / "step_00000006").iterdir())
    assert sorted(p.name for p in (final / ".parts").iterdir()) == ["rank_0", "rank_1"]
    assert json.loads((final / "trainer_state.json").read_text())["step"] == STEPS
    assert not [p for p in staging.rglob("*") if p.is_file() and "zero_to" not in p.name]  # uploads cleaned up

    # 3. The weights are the unstaged run's (same world size, restored RNG and data position).
    got, want = fp32_params(final), fp32_params(reference / "checkpoints" / "step_00000006")
    assert got.keys() == want.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-5, rtol=1e-4) for k in want)
    # What the saves cost the training is a metric.
    blocking = [r["checkpoint/blocking_s"] for r in read_jsonl(run_dir / "metrics.jsonl") if "checkpoint/blocking_s" in r]
    assert blocking and all(0 <= b < 60 for b in blocking)
