"""Tensor parallelism through the real trainer (``deepspeed launcher/pretrain.py``) on gloo: LARA
with a tiny random Qwen3-VL backbone (fully tuned) and its DiT head, 5 steps at TP=2 x DP=2 (4
ranks) against TP=1 x DP=2 (2 ranks), at ZeRO-1 and at ZeRO-3 (there with sequence parallelism and
recomputation); then the checkpoints resume at other layouts (TP 2 -> 1, TP 1 -> 2, DP 2 -> 1 at
TP 2). Same data-parallel layout, so the same samples and noise reach each replica: any difference
is the TP implementation's.

Why not TP=1 x DP=4: noise (flow-matching time and noise, LAM sampling) comes from per-replica RNG
streams, so 4 replicas draw other noise than 2 even without TP; the comparison would not be exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow
pytest.importorskip("megatron.core")

STEPS = 5


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from tests.model.hf_tiny_models import write_tiny_qwen3_vl

    return write_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen") / "qwen3_vl", num_layers=3)


def _train(world: list[str], qwen: Path, run_dir: Path, ranks: int, tp: int, zero: int, *extra: str) -> list[dict]:
    run_deepspeed([*world, f"--run.dir={run_dir}", f"--trainer.max_steps={STEPS}", "--trainer.micro_batch_size=2",
                   "--checkpoint.every_steps=0", "--checkpoint.save_final=true", f"--trainer.zero.stage={zero}",
                   "--model.backbone.kind=hf", f"--model.backbone.hf.pretrained_path={qwen}",
                   "--model.backbone.hf.image_size=32", "--model.backbone.hf.tuning=full",
                   f"--parallel.tensor_parallel_size={tp}", *extra], num_ranks=ranks, timeout=900)
    return read_jsonl(run_dir / "metrics.jsonl")


def _same_steps(tp2: list[dict], tp1: list[dict], steps: range = range(1, STEPS + 1)) -> None:
    assert [r["step"] for r in tp2] == [r["step"] for r in tp1] == list(steps)
    for a, b in zip(tp2, tp1):
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key, a[key], b[key])


def _final_checkpoint(run_dir: Path) -> Path:
    return max((run_dir / "checkpoints").glob("step_*"))


def _resume_with_one_replica(world: list[str], qwen: Path, src: Path, run_dir: Path, zero: int, tp: int) -> list[dict]:
    """Two more steps at TP=``tp`` x DP=1 from ``src``'s final checkpoint (through its universal form)."""
    return _train(world, qwen, run_dir, tp, tp, zero, f"--resume={_final_checkpoint(src)}",
                  f"--trainer.max_steps={STEPS + 2}")[-2:]


def _resumes_alike(world: list[str], qwen: Path, tmp_path: Path, zero: int, tp2_from: str) -> None:
    """Layout changes are exact. Reference: the TP=1 checkpoint resumed at TP=1 x DP=1 (DeepSpeed's
    conversion). The TP=2 checkpoint resumed at TP=1 x DP=1 (TP-aware conversion to the canonical
    TP=1 form), and the ``tp2_from`` checkpoint resumed at TP=2 x DP=1 (each TP rank's shard cut from
    the canonical form), train alike: one replica each, so the same reseeded RNG."""
    steps = range(STEPS + 1, STEPS + 3)
    reference = _resume_with_one_replica(world, qwen, tmp_path / "tp1", tmp_path / "tp1_to_tp1dp1", zero, 1)
    _same_steps(_resume_with_one_replica(world, qwen, tmp_path / "tp2", tmp_path / "tp2_to_tp1dp1", zero, 1),
                reference, steps)
    _same_steps(_resume_with_one_replica(world, qwen, tmp_path / tp2_from, tmp_path / f"{tp2_from}_to_tp2dp1", zero, 2),
                reference, steps)


def test_zero1_tp2_dp2_equals_tp1_and_keeps_replicas_identical(tmp_path, tiny_world_args, tiny_qwen):
    tp2 = _train(tiny_world_args, tiny_qwen, tmp_path / "tp2", 4, 2, 1)
    tp1 = _train(tiny_world_args, tiny_qwen, tmp_path / "tp1", 2, 1, 1)
    _same_steps(tp2, tp1)
    ckpt = _final_checkpoint(tmp_path / "tp2")
    assert json.loads((ckpt / "trainer_state.json").read_text())["tensor_parallel_size"] == 2
    # ZeRO-1 keeps each TP rank's whole module: the weights every TP rank holds a copy of (norms whose
    # gradients are TP-partial, the vision tower) must be bit-identical after training.
    ranks = [torch.load(ckpt / f"mp_rank_0{r}_model_states.pt", map_location="cpu", weights_only=False)["module"]
             for r in range(2)]
    replicated = [k for k in ranks[0] if "layernorm" in k or ".visual." in k]
    assert any("q_layernorm" in k for k in replicated) and any(".visual." in k for k in replicated)
    for key in replicated:
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=key)
    _resumes_alike(tiny_world_args, tiny_qwen, tmp_path, 1, tp2_from="tp1")  # TP 1 -> 2


def test_zero3_tp2_with_sequence_parallel_and_recompute_equals_tp1_and_exports_the_same(
        tmp_path, tiny_world_args, tiny_qwen):
    from safetensors.torch import load_file

    from lavla.trainer.export import export_policy

    tp2 = _train(tiny_world_args, tiny_qwen, tmp_path / "tp2", 4, 2, 3, "--parallel.sequence_parallel=true",
                 "--trainer.activation_checkpointing=true")
    tp1 = _train(tiny_world_args, tiny_qwen, tmp_path / "tp1", 2, 1, 3)
    _same_steps(tp2, tp1)
    # The export consolidates the TP shards to the TP=1 model's (Hugging Face) names and layouts.
    for name in ("tp2", "tp1"):
        export_policy(tmp_path / name, tmp_path / f"{name}_export")  # verifies: load_policy loads it back
    a, b = (load_file(tmp_path / f"{name}_export" / "model.safetensors") for name in ("tp2", "tp1"))
    assert a.keys() == b.keys()
    assert any("self_attn.q_proj" in k for k in a) and not any("linear_qkv" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, msg=key)
    _resumes_alike(tiny_world_args, tiny_qwen, tmp_path, 3, tp2_from="tp2")  # DP 2 -> 1 at TP 2


def test_zero_init_builds_tp_modules_from_partitioned_weights(tmp_path, tiny_world_args):
    """``trainer.zero_init`` partitions at construction (over the data-parallel group, told to
    zero.Init with the mpu): the DiT's TP shards are cut from gathered weights, and training matches
    TP=1 (the built-in backbone; the Hugging Face one: the next test)."""
    common = [*tiny_world_args, f"--trainer.max_steps={STEPS}", "--trainer.micro_batch_size=2",
              "--checkpoint.every_steps=0", "--trainer.zero.stage=3", "--trainer.zero_init=true"]
    runs = {}
    for tp, ranks in ((2, 4), (1, 2)):
        run_dir = tmp_path / f"tp{tp}"
        run_deepspeed([*common, f"--run.dir={run_dir}", f"--parallel.tensor_parallel_size={tp}"], num_ranks=ranks,
                      timeout=900)
        runs[tp] = read_jsonl(run_dir / "metrics.jsonl")
    _same_steps(runs[2], runs[1])


def test_zero_init_loads_a_hugging_face_backbone_into_every_tp_rank(tmp_path, tiny_world_args, tiny_qwen):
    """A Hugging Face backbone under ``trainer.zero_init``: transformers builds and loads it
    ZeRO-3-partitioned (it is told through ``HfDeepSpeedConfig``), but fills only the data-parallel
    group of global rank 0; the other TP rank's group copies its shards from there (without that
    copy its shards are uninitialized memory and every loss is non-finite). A vanishing learning
    rate keeps the weights where construction put them: the TP=2 export holds exactly the
    pretrained weights, and TP2 x DP2 computes what TP1 x DP2 does."""
    from safetensors.torch import load_file

    from lavla.trainer.export import export_policy

    still = ("--trainer.zero_init=true", "--optim.lr=1e-20", "--optim.weight_decay=0", "--trainer.max_steps=2")
    tp2 = _train(tiny_world_args, tiny_qwen, tmp_path / "tp2", 4, 2, 3, *still)
    tp1 = _train(tiny_world_args, tiny_qwen, tmp_path / "tp1", 2, 1, 3, *still)
    _same_steps(tp2, tp1, range(1, 3))
    export_policy(tmp_path / "tp2", tmp_path / "tp2_export")
    exported = load_file(tmp_path / "tp2_export" / "model.safetensors")
    pretrained = load_file(tiny_qwen / "model.safetensors")
    assert any("visual" in k for k in pretrained) and any("layers.2.self_attn" in k for k in pretrained)
    for key, weight in pretrained.items():
        got = exported[f"backbone.model.{key}"]
        rows = weight.shape[0]  # the embedding and LM head gained the placeholder token's row
        assert got.shape[1:] == weight.shape[1:] and got.shape[0] >= rows, key
        # (1e-20 steps move a zero bias off zero, not by more than this)
        torch.testing.assert_close(got[:rows], weight.to(got.dtype), rtol=0, atol=1e-12, msg=key)
