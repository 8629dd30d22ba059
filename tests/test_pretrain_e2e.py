"""End to end through ``deepspeed launcher/pretrain.py`` with real ranks on CPU (gloo): run dir
layout and metrics, resume, non-finite step skipping, and the profiling job. Crash / preemption /
world-size-change resumption is in test_resume_faults.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.checkpoint_helpers import fp32_params
from tests.conftest import REPO, read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow


def test_help_lists_every_config_field():
    # The image's default command; argparse %-formats help strings, so a bare % in a field
    # docstring once broke it.
    proc = subprocess.run([sys.executable, "launcher/pretrain.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--trainer.max_steps" in proc.stdout and "train[95%:]" in proc.stdout


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
        assert "loss/flow" in r and "loss/align" in r and "loss/lam" in r  # each loss term
        assert r["grad_norm"] > 0 and r["lr"] > 0
        assert r["tokens_per_s"] == r["samples_per_s"] * r["tokens_per_sample"]
        assert r["flops_per_step"] > 0 and r["tflops"] > 0 and r["mfu"] is None  # CPU: no peak, no MFU
        phases = [r[f"time/{p}_s"] for p in ("data", "forward", "backward", "optimizer", "other")]
        assert min(phases) >= 0 and sum(phases) == pytest.approx(r["time/step_s"], rel=1e-6)
        assert r["time/forward_s"] > 0 and r["time/backward_s"] > 0
        assert r["memory/max_rss_gib"] > 0 and r["nonfinite/skipped_steps"] == 0
        assert r["device"] == "cpu" and r["world_size"] == 2
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


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path, tiny_world_args):
    """NaN on rank 0 at step 3: every rank skips the update, training goes on. NaN at steps 5 and 6
    with trainer.max_nonfinite_steps=2: the run stops at step 6 naming the loss terms."""
    run_dir = tmp_path / "run"
    proc = run_deepspeed([*tiny_world_args, f"--run.dir={run_dir}", "--trainer.max_steps=8", "--optim.warmup_steps=0",
                          "--trainer.max_nonfinite_steps=2", "--checkpoint.every_steps=1", "--checkpoint.keep_last=10"],
                         num_ranks=2, env={"LAVLA_FAULTS": "nan_at_step:3,nan_at_step:5,nan_at_step:6"}, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "stopping at step 6: 2 consecutive steps skipped" in out
    assert "loss/flow (rank 0)" in out and "step 3 skipped" in out

    records = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    assert sorted(records) == [1, 2, 3, 4, 5]  # step 6 raised before logging
    assert records[3]["nonfinite/skipped_steps"] == 1 and "loss" not in records[3]
    assert records[4]["nonfinite/skipped_steps"] == 0 and records[4]["loss"] > 0
    assert records[5]["nonfinite/skipped_total"] == 2
    assert records[3]["consumed_samples"] == 3 * 8  # a skipped step still consumes its batch

    ckpts = run_dir / "checkpoints"
    p2, p3, p4 = (fp32_params(ckpts / f"step_0000000{s}") for s in (2, 3, 4))
    assert all(torch.equal(p2[k], p3[k]) for k in p2)  # the skipped step changed no parameter
    assert not all(torch.equal(p3[k], p4[k]) for k in p3)  # and the next one trained normally
    assert json.loads((ckpts / "step_00000005" / "trainer_state.json").read_text())["nonfinite_skipped_total"] == 2


def test_profile_run_writes_trace_report_and_plot(tmp_path, tiny_world_args):
    run_dir = tmp_path / "prof"
    proc = subprocess.run([sys.executable, "-m", "lavla.launcher.profile_run", *tiny_world_args, f"--run.dir={run_dir}",
                           "--steps", "4", "--warmup", "2"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    prof = run_dir / "profile"
    assert (prof / "trace_rank0.json.gz").stat().st_size > 1000
    report = (prof / "throughput.md").read_text()
    assert "Profiled steps 3..4" in report and "| backward |" in report and "samples_per_s" in report
    assert (prof / "step_breakdown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / "checkpoints" / "latest").exists()  # profiling jobs write no checkpoints
