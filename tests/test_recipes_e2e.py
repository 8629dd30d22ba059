"""Every VLA recipe trains through ``deepspeed launcher/pretrain.py`` with its own YAML, on CPU,
on the synthetic world: its loss falls and its metrics name each loss term. The two-stage recipes
(la_tok after the action tokenizer, lapa_action after lapa_latent) chain through exports, and one
run swaps in a tiny random Qwen3-VL through ``backbone.kind=hf``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow

TERMS = {
    "baseline": {"loss/action_l1"},
    "la_align": {"loss/action_l1", "loss/align"},
    "la_direct": {"loss/action_l1", "loss/latent_ce"},
    "la_cond": {"loss/action_l1", "loss/latent_ce"},
    "la_tok": {"loss/action_l1", "loss/latent_ce"},
    "lapa_latent": {"loss/latent_ce"},
    "lapa_action": {"loss/action_ce"},
    "action_tokenizer": {"loss/recon", "loss/vq"},
    "lara": {"loss/flow", "loss/align", "loss/lam"},
}


def _args(recipe: str, world: list[str], run_dir: Path, steps: int, *extra: str) -> list[str]:
    config = ["--config", str(REPO / "configs" / f"{recipe}.yaml")]
    # tiny_world_args starts with the quickstart's --config: the recipe's YAML replaces it.
    return [*config, *world[2:], f"--run.dir={run_dir}", f"--trainer.max_steps={steps}",
            "--trainer.micro_batch_size=8", "--optim.warmup_steps=0", "--optim.lr=0.002",
            "--checkpoint.every_steps=0", *extra]


def _train(recipe: str, world: list[str], run_dir: Path, steps: int = 16, *extra: str) -> list[dict]:
    run_deepspeed(_args(recipe, world, run_dir, steps, *extra), num_ranks=1)
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert TERMS[recipe] | {"loss"} <= set(records[0]), sorted(records[0])
    first = sum(r["loss"] for r in records[:3]) / 3
    last = sum(r["loss"] for r in records[-3:]) / 3
    assert last < first, (recipe, first, last)
    return records


def _export(run_dir: Path, out: Path) -> Path:
    from lavla.trainer.export import export_policy

    export_policy(run_dir, out)
    return out


@pytest.mark.parametrize("recipe", ["baseline", "la_align", "la_direct", "la_cond"])
def test_pixels_to_tokens_recipe_trains(recipe: str, tmp_path: Path, tiny_world_args: list[str]) -> None:
    _train(recipe, tiny_world_args, tmp_path / "run")


def test_la_tok_trains_on_an_exported_action_tokenizer(tmp_path: Path, tiny_world_args: list[str]) -> None:
    _train("action_tokenizer", tiny_world_args, tmp_path / "tok", 16, "--checkpoint.save_final=true")
    tok = _export(tmp_path / "tok", tmp_path / "tok_export")
    _train("la_tok", tiny_world_args, tmp_path / "run", 16, f"--model.tokenizer_init={tok}")


def test_lapa_stage_2_then_stage_3_from_its_export(tmp_path: Path, tiny_world_args: list[str]) -> None:
    _train("lapa_latent", tiny_world_args, tmp_path / "latent", 16, "--checkpoint.save_final=true")
    stage2 = _export(tmp_path / "latent", tmp_path / "latent_export")
    _train("lapa_action", tiny_world_args, tmp_path / "action", 16, f"--model.init_from={stage2}",
           "--model.num_bins=32", "--model.bins_fit_samples=2000")


def test_baseline_on_a_tiny_qwen3_vl_with_lora(tmp_path: Path, tiny_world_args: list[str]) -> None:
    from tests.model.hf_tiny_models import write_tiny_qwen3_vl

    qwen = write_tiny_qwen3_vl(tmp_path / "qwen")
    _train("baseline", tiny_world_args, tmp_path / "run", 12, "--model.backbone.kind=hf",
           f"--model.backbone.hf.pretrained_path={qwen}", "--model.backbone.hf.image_size=32",
           "--model.backbone.hf.lora_r=8")
