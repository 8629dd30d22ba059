"""The parallelism planner: its formulas by hand on small numbers, and the layouts it recommends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lavla.launcher.plan_parallel import main
from tests.conftest import REPO
from lavla.trainer.parallel_plan import (GIB, SHAPES, Layout, ModelShape, activation_bytes, comm_bytes, estimate,
                                         model_state_bytes, recommend, shape_of_model)

FULL = ModelShape("toy", tp_params=8e9, other_params=0.0, trainable_params=8e9, layers=2, hidden=1024, heads=8, seq=128)


def test_model_states_follow_mixed_precision_adam_and_the_zero_stages() -> None:
    p = FULL.params
    assert model_state_bytes(FULL, tp=1, dp=8, zero=0) == 16 * p  # 2 weights + 2 grads + 12 optimizer
    assert model_state_bytes(FULL, tp=1, dp=8, zero=1) == pytest.approx((2 + 2 + 12 / 8) * p)
    assert model_state_bytes(FULL, tp=1, dp=8, zero=2) == pytest.approx((2 + (2 + 12) / 8) * p)
    assert model_state_bytes(FULL, tp=1, dp=8, zero=3) == pytest.approx(16 * p / 8)
    assert model_state_bytes(FULL, tp=2, dp=4, zero=0) == pytest.approx(8 * p)  # TP halves the sharded layers
    frozen = dataclasses.replace(FULL, trainable_params=0.0)
    assert model_state_bytes(frozen, tp=1, dp=8, zero=2) == 2 * p  # a frozen weight is its bf16 copy only


def test_activations_follow_korthikanti_et_al() -> None:
    s, b, h, a, L = FULL.seq, 2, FULL.hidden, FULL.heads, FULL.layers
    base = s * b * h * (34 + 5 * a * s / h) * L
    assert activation_bytes(FULL, b, tp=1, sequence_parallel=False, recompute=False) == pytest.approx(base)
    assert activation_bytes(FULL, b, tp=4, sequence_parallel=True, recompute=False) == pytest.approx(base / 4)
    tp_only = activation_bytes(FULL, b, tp=4, sequence_parallel=False, recompute=False)
    assert base / 4 < tp_only < base  # the layer norms and dropouts stay replicated without SP
    assert activation_bytes(FULL, b, tp=1, sequence_parallel=False, recompute=True) == 2 * s * b * h * L


def test_communication_of_data_and_tensor_parallelism() -> None:
    grads = 2 * FULL.params
    assert comm_bytes(FULL, tp=1, dp=1, zero=3, micro_batch=2, grad_accum=1) == 0.0
    allreduce = comm_bytes(FULL, tp=1, dp=8, zero=0, micro_batch=2, grad_accum=1)
    assert allreduce == pytest.approx(2 * 7 / 8 * grads)
    assert comm_bytes(FULL, tp=1, dp=8, zero=3, micro_batch=2, grad_accum=1) == pytest.approx(1.5 * allreduce)
    tp2 = comm_bytes(FULL, tp=2, dp=1, zero=0, micro_batch=2, grad_accum=1)
    assert tp2 == pytest.approx(4 * FULL.layers * (2 * 1 / 2) * 2 * FULL.seq * 2 * FULL.hidden)
    e = estimate(FULL, Layout(1, 8, 3, False, False), micro_batch=2)
    assert e.total_gib == pytest.approx((16 * FULL.params / 8 + activation_bytes(FULL, 2, 1, False, False)) / GIB)


def test_recommendations_use_tp_only_where_it_pays() -> None:
    best, _ = recommend(SHAPES["qwen3-vl-2b"], gpus=8, gpu_gib=80, micro_batch=8)
    assert best is not None and (best.layout.tp, best.layout.zero, best.layout.recompute) == (1, 1, False)
    best, _ = recommend(SHAPES["lwm-7b"], gpus=2, gpu_gib=80, micro_batch=8)
    assert best is not None and (best.layout.tp, best.layout.zero) == (1, 3)  # ZeRO-3 before TP
    long_video = dataclasses.replace(SHAPES["lwm-7b"], seq=2048)
    best, _ = recommend(long_video, gpus=8, gpu_gib=80, micro_batch=2)
    assert best is not None and best.layout.tp == 2 and best.layout.sequence_parallel and not best.layout.recompute
    assert recommend(SHAPES["lwm-7b"], gpus=1, gpu_gib=80, micro_batch=4)[0] is None


def test_cli_prints_the_table_and_the_reasons(capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", "lwm-7b", "--gpus", "8", "--seq", "2048", "--micro-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "recommended: TP 2 x DP 4, ZeRO-1, sequence parallel" in out and "why: TP 2" in out
    assert "run with: --trainer.zero.stage=1 --parallel.tensor_parallel_size=2 --parallel.sequence_parallel=true" in out
    assert main(["--model", "lwm-7b", "--gpus", "0"]) == 2


def test_recipe_shapes_count_what_tensor_parallelism_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("megatron.core")
    from tests.model.hf_tiny_models import write_tiny_qwen3_vl

    from lavla.model.factory import build_model
    from lavla.trainer.config_io import load_config

    qwen = write_tiny_qwen3_vl(tmp_path / "qwen", num_layers=3)
    args = ["--model.backbone.kind=hf", f"--model.backbone.hf.pretrained_path={qwen}", "--model.backbone.hf.image_size=32",
            "--model.backbone.hf.tuning=full"]
    cfg = load_config(["--config", str(REPO / "configs" / "quickstart.yaml"), *args])
    model = build_model(cfg.model, cfg.data)
    shape = shape_of_model(model, "tiny", seq=64)
    text = model.backbone.model.model.language_model
    dit_blocks = [m for name, m in model.named_modules() if name.endswith(("self_attn", "cross_attn", ".mlp"))
                  and "head.dit.blocks." in name]
    expected = sum(p.numel() for p in text.layers.parameters()) + sum(p.numel() for m in dit_blocks for p in m.parameters())
    assert shape.tp_params == expected
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert (shape.layers, shape.hidden, shape.heads) == (3, 64, 4)
    assert main(["--recipe", str(REPO / "configs" / "quickstart.yaml"), "--gpus", "4", *[f"--set={a[2:]}" for a in args]]) == 0
    assert "run with: --trainer.zero.stage=" in capsys.readouterr().out
