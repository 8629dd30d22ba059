"""The MFU benchmark: full-size presets pass the model/data shape checks (built on the meta
device, no memory), and a tiny CPU run produces its JSON report. The GPU numbers themselves come
from running it on GPUs (see trainer/bench_mfu.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from lavla.trainer.bench_mfu import FULL_SIZE, full_size_overrides, random_batch
from lavla.trainer.config_io import load_config


@pytest.mark.parametrize("recipe", sorted(FULL_SIZE))
def test_full_size_presets_build(recipe, tmp_path):
    from lavla.model.factory import build_model

    cfg = load_config(full_size_overrides(recipe, tmp_path))  # configs/full/<recipe>.yaml, as users load it
    from lavla.model.config import ModelConfig

    assert ModelConfig.get_choice_name(type(cfg.model)) == recipe and cfg.data.image_size == 224
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.data)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total > 4e8 and 0 < trainable < total  # frozen towers are frozen
    if recipe == "baseline":
        # The backbone is Qwen3-VL-2B-Instruct's architecture itself: 2,127,532,032 parameters in its
        # published config (28 x 2048 text model with tied embeddings, 24 x 1024 vision tower), plus
        # LoRA r=64 on every linear layer and one row for the added placeholder token.
        base = {n: p for n, p in model.backbone.named_parameters() if "lora_" not in n}
        assert sum(p.numel() for p in base.values()) == 2_127_532_032 + 2048
        lora = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" in n)
        assert 9e7 < lora < 1.1e8 and all(p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" in n)
    batch = random_batch(cfg, 2, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert batch["image_primary"].shape == (2, 3, 224, 224) and batch["image_primary"].dtype == torch.uint8


@pytest.mark.slow
def test_tiny_cpu_run_reports_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "lavla.trainer.bench_mfu", "--recipe", "lara", "--steps", "1", "--warmup", "1",
           "--micro-batch", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["flops_per_step_per_device"] > 0 and res["step_s"] > 0 and res["mfu"] is None  # CPU: no peak
    split = res["forward_flops_by_module"]
    assert {"backbone", "lam", "head"} <= set(split) and min(split.values()) >= 0
    # forward is about a third of forward + backward (frozen towers have no weight gradients: more)
    assert 0.25 < sum(split.values()) / res["flops_per_step_per_device"] < 0.5
    assert res["git_commit"] and res["command"].startswith("python -m lavla.trainer.bench_mfu --recipe lara")


def test_flops_only_counts_the_bare_model(tmp_path):
    from lavla.trainer.bench_mfu import bench

    res = bench(["--recipe", "lara", "--flops-only", "--micro-batch", "2", "--out", str(tmp_path / "f.json")])
    assert json.loads((tmp_path / "f.json").read_text()) == res and "--flops-only" in res["command"]
    assert res["flops_per_sample"] * 2 == res["flops_per_step"] > 0 and 0 < res["trainable_params"] <= res["params"]
    forward = sum(res["forward_flops_by_module"].values())
    assert 0.25 < forward / res["flops_per_step"] < 0.5 and res["forward_flops_by_module"]["lam"] > 0


def test_the_8b_architecture_has_qwen3_vl_8b_sizes() -> None:
    """The shape gpu_suite.sh measures at TP=1: Qwen3-VL-8B-Instruct's published 8.77 B parameters."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from lavla.model.hf_architecture import QWEN3_VL_8B_TEXT, QWEN3_VL_8B_VISION

    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=QWEN3_VL_8B_TEXT, vision_config=QWEN3_VL_8B_VISION))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(8.77, abs=0.005)
