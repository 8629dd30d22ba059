"""End to end through ``deepspeed launcher/pretrain.py`` with real ranks on CPU (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow


def test_config_typo_fails_fast_naming_the_key():
    proc = subprocess.run([sys.executable, "launcher/pretrain.py", "--config", "configs/quickstart.yaml",
                           "--trainer.max_stpes=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "trainer.max_stpes" in proc.stderr and "trainer.max_steps" in proc.stderr


def test_two_ranks_write_run_dir_then_resume_continues(tmp_path, tiny_world_args):
    run_dir = tmp_path / "run"
    args = [*tiny_world_args, f"--run.dir={run_dir}", "--checkpoint.every_steps=2"]
    run_deepspeed([*args, "--trainer.max_steps=4"], num_ranks=2)

    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["trainer"]["max_steps"] == 4 and resolved["model"]["type"] == "lara"
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert r["loss"] > 0 and r["samples_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1
        assert "loss/flow" in r and "loss/align" in r
    assert records[-1]["consumed_samples"] == 4 * 8
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000004"
    assert (ckpts / "step_00000004" / "COMPLETE").is_file()
    state = json.loads((ckpts / "step_00000004" / "trainer_state.json").read_text())
    assert state["data"]["consumed"] == 32 and state["world_size"] == 2

    # Same command with --resume=auto and a higher step budget continues, not restarts.
    run_deepspeed([*args, "--trainer.max_steps=6", "--resume=auto"], num_ranks=2)
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["consumed_samples"] == 6 * 8
    assert (ckpts / "latest").read_text() == "step_00000006"


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_world_args):
    """Stop at step 3, resume to 6: losses and consumed samples equal an uninterrupted run."""
    base = [*tiny_world_args, "--data.log_sample_ids=true", "--checkpoint.every_steps=3"]
    full, part = tmp_path / "full", tmp_path / "part"
    run_deepspeed([*base, f"--run.dir={full}", "--trainer.max_steps=6"], num_ranks=2)
    run_deepspeed([*base, f"--run.dir={part}", "--trainer.max_steps=3"], num_ranks=2)
    run_deepspeed([*base, f"--run.dir={part}", "--trainer.max_steps=6", "--resume=auto"], num_ranks=2)

    def losses(d):
        return {r["step"]: r["loss"] for r in read_jsonl(d / "metrics.jsonl")}

    lf, lp = losses(full), losses(part)
    for step in (4, 5, 6):
        assert lp[step] == pytest.approx(lf[step], rel=1e-5, abs=1e-6), step

    def sample_ids(d, rank):
        return [(r["step"], r["sample_ids"]) for r in read_jsonl(d / f"samples.rank{rank}.jsonl")]

    for rank in (0, 1):
        assert sample_ids(part, rank) == sample_ids(full, rank)
    # Two ranks never see the same sample: together they cover each global batch exactly once.
    all_ids = [i for rank in (0, 1) for _, ids in sample_ids(full, rank) for i in ids]
    assert sorted(all_ids) == list(range(6 * 8))
