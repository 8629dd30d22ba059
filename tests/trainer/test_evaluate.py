"""Offline evaluation (trainer/evaluate.py), its report, the launcher.evaluate CLI and the trainer's
periodic evaluation hook."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lavla.data_service.stats import EPS, ArrayStats, DatasetStatistics, Normalizer
from lavla.model.recipe import Capabilities, Recipe
from tests.conftest import REPO, read_jsonl, run_deepspeed
from tests.model.model_test_utils import (
    IMAGE,
    A,
    N,
    P,
    random_batch,
    tiny_lam_config,
    tiny_lara_config,
    zero3_emulation,
)
from lavla.trainer.evaluate import (
    PSNR_CAP_DB,
    codebook_usage,
    evaluate,
    linear_probe,
    masked_action_errors,
    psnr,
    supervision_mask,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _lara() -> torch.nn.Module:
    from lavla.model.recipes.lara.policy import LaraPolicy

    torch.manual_seed(0)
    return LaraPolicy(tiny_lara_config()).train()


def _batches(n: int, size: int = 8) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        b = random_batch(size, seed=i)
        b["sample_id"] = b["sample_id"] + size * i  # distinct plan indices, as the data service gives
        out.append(b)
    return out


# --- pure functions ---------------------------------------------------------------------------------


def test_probe_recovers_a_linear_map_and_finds_nothing_in_noise() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g, dtype=torch.float64)
    w = torch.randn(8, 3, generator=g, dtype=torch.float64)
    motion = x @ w
    extra = torch.stack([torch.full((400,), 2.0), torch.full((400,), float("nan"))], 1).double()
    out = linear_probe(x, torch.cat([motion, extra], 1), fit_frac=0.5)
    assert out["probe/num_fit"] == 200 and out["probe/num_test"] == 200
    assert out["probe/r2"] > 0.999 and all(out[f"probe/r2/dim{d}"] > 0.999 for d in range(3))
    assert "probe/r2/dim3" not in out and "probe/r2/dim4" not in out  # constant / padded dims have no R^2
    assert out["probe/direction_acc"] > 0.9 > out["probe/direction_chance"]

    noise = torch.randn(400, 3, generator=g, dtype=torch.float64)
    out = linear_probe(x, noise, fit_frac=0.5)
    assert -0.2 < out["probe/r2"] < 0.05
    assert out["probe/direction_acc"] < 0.4  # 6 classes: chance level
    assert linear_probe(x[:6], motion[:6]) == {}  # too few rows to fit and score


def test_psnr_of_identical_images_and_of_a_known_mse() -> None:
    img = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    assert torch.isinf(psnr(img, img, cap=None)).all()
    assert torch.equal(psnr(img, img), torch.full((2,), PSNR_CAP_DB, dtype=torch.float64))
    shifted = img + 0.1  # MSE 0.01 for [-1,1] images: 10 log10(4 / 0.01)
    assert psnr(shifted, img).tolist() == pytest.approx([10 * math.log10(4 / 0.01)] * 2, rel=1e-9)
    assert psnr(img[:1] + 0.5, img[:1]).item() == pytest.approx(10 * math.log10(4 / 0.25), rel=1e-9)


def test_masked_action_errors_ignore_padded_dims_invalid_steps_and_actionless_samples() -> None:
    batch = {
        "action_dim_mask": torch.tensor([[True, True, False], [True, True, True]]),
        "action_valid": torch.tensor([[True, False], [True, True]]),
        "has_action": torch.tensor([True, False]),
    }
    target = torch.tensor([[[1.0, -2.0, 1e6], [float("nan"), 5.0, 5.0]],
                           [[float("nan"), 7.0, 7.0], [1e9, 1e9, 1e9]]])
    pred = torch.zeros_like(target)
    e = masked_action_errors(pred, target, supervision_mask(batch))
    # Only sample 0, step 0, dims 0 and 1 are supervised.
    assert e.count.tolist() == [1.0, 1.0, 0.0]
    assert e.abs_sum.tolist() == [1.0, 2.0, 0.0]
    assert e.sq_sum.tolist() == [1.0, 4.0, 0.0]


def test_codebook_perplexity_and_active_codes_of_known_histograms() -> None:
    p = np.array([0.75, 0.25])
    assert codebook_usage(torch.tensor([3, 1, 0, 0])) == (pytest.approx(math.exp(-(p * np.log(p)).sum())), 2)
    assert codebook_usage(torch.ones(8)) == (pytest.approx(8.0), 8)
    assert codebook_usage(torch.tensor([0, 5, 0])) == (pytest.approx(1.0), 1)  # collapsed codebook
    assert codebook_usage(torch.zeros(4)) == (0.0, 0)


# --- evaluate() on real recipes ---------------------------------------------------------------------


def _normal_normalizer(seed: int = 0) -> Normalizer:
    rows = np.random.default_rng(seed).normal(size=(100, A)).astype(np.float32) * np.arange(1, A + 1) + 3.0
    return Normalizer(DatasetStatistics(ArrayStats.of(rows), ArrayStats.of(rows[:, :P]), 100, 4), "normal")


def test_evaluate_tiny_lara_every_metric_restores_mode_and_rng() -> None:
    model = _lara()
    batches = _batches(3)
    norm = _normal_normalizer()
    rng = torch.get_rng_state()
    out = evaluate(model, batches, normalizers=[norm])
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # train mode and RNG untouched
    expected = {"loss", "loss/flow", "loss/align", "loss/lam", "num_batches", "num_samples",
                "action/l1", "action/mse", "action/l1_step0", "action/num_entries", "action_raw/l1", "action_raw/mse",
                "action_raw/l1_step0", "lam/recon_mse", "lam/psnr", "codebook/perplexity", "codebook/active_codes",
                "codebook/usage_frac", "probe/r2", "probe/r2/dim0", "probe/num_fit", "probe/num_test"}
    assert expected <= set(out), expected - set(out)
    assert {f"action/l1/dim{d}" for d in range(A)} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    assert out["num_batches"] == 3 and out["num_samples"] == 24
    assert 1 <= out["codebook/active_codes"] <= 16 and 1 <= out["codebook/perplexity"] <= out["codebook/active_codes"]
    assert 0 < out["lam/psnr"] < PSNR_CAP_DB
    assert out["lam/psnr"] >= 10 * math.log10(4 / out["lam/recon_mse"]) - 1e-6  # mean of log >= log of mean (Jensen)

    # Exactly the masked error of the same seeded prediction.
    mask = [supervision_mask(b) for b in batches]
    assert out["action/num_entries"] == sum(int(m.sum()) for m in mask)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    preds = [model.predict_action(b, generator=gen) for b in batches]
    abs_sum = sum(float(((p - b["action"]).abs() * m).sum()) for p, b, m in zip(preds, batches, mask))
    assert out["action/l1"] == pytest.approx(abs_sum / out["action/num_entries"], rel=1e-6)
    # Raw units of the "normal" mode: raw error = normalized error x (std + eps), per dim.
    for d in range(A):
        assert out[f"action_raw/l1/dim{d}"] == pytest.approx(
            out[f"action/l1/dim{d}"] * (norm.stats.action.std[d] + EPS), rel=1e-5)

    # Deterministic, and parameters are only used inside their owners' forward (ZeRO-3 safe).
    model.train()
    with zero3_emulation(model):
        again = evaluate(model, batches, normalizers=[norm])
    assert again == out


def test_evaluate_scores_latent_tokens_of_lapa_stage2() -> None:
    from lavla.data_service.config import DataConfig
    from lavla.model.config import BackboneConfig
    from lavla.model.factory import build_model
    from lavla.model.recipes.lapa.config import LapaLatentConfig

    cfg = LapaLatentConfig(backbone=BackboneConfig(image_size=IMAGE, patch_size=8, dim=32, depth=2, heads=4))
    cfg.latent.lam = tiny_lam_config()
    torch.manual_seed(0)
    model = build_model(cfg, DataConfig(image_size=IMAGE, action_horizon=N, max_action_dim=A, max_proprio_dim=P))
    batches = _batches(2)
    out = evaluate(model, batches)
    assert "action/l1" not in out  # stage 2 predicts no actions
    assert {"loss/latent_ce", "latent/token_acc", "codebook/perplexity", "lam/psnr"} <= set(out)
    model.eval()
    with torch.no_grad():
        hits = sum(int((model.predict_latents(b) == model.latent(b).ids.flatten(1)).sum()) for b in batches)
    assert out["latent/num_tokens"] == 2 * 8 * 4  # samples x codes per sample (one online latent step)
    assert out["latent/token_acc"] == pytest.approx(hits / out["latent/num_tokens"])


_DIST_WORKER = """
import sys
import torch
import torch.distributed as dist
sys.path.insert(0, {tests_model!r})
from typing import Any
import numpy as np
from lavla.data_service.stats import ArrayStats, DatasetStatistics, Normalizer
from model_test_utils import A, P, random_batch, tiny_lara_config
from lavla.trainer.evaluate import evaluate

{helpers}
from lavla.trainer.model_hooks import QuantizerHooks

rank, world = int(sys.argv[1]), 2
dist.init_process_group("gloo", init_method="file://{init}", rank=rank, world_size=world)
try:
    model = _lara()
    QuantizerHooks(model, zero_stage=0)  # quantizer statistics all-reduced per forward, as in training
    out = evaluate(model, _batches(4, size=4)[rank::world], normalizers=[_normal_normalizer()], distributed=True)
    torch.save(out, "{out}/rank%d.pt" % rank)
finally:
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_distributed_evaluation_reduces_over_ranks(tmp_path: Path) -> None:
    here = Path(__file__).resolve().parent
    helpers = "\n\n".join(inspect.getsource(f) for f in (_lara, _batches, _normal_normalizer))
    code = _DIST_WORKER.format(tests_model=str(here.parent / "model"), helpers=helpers,
                               init=str(tmp_path / "init"), out=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0 == r1  # every rank returns the same metrics
    single = evaluate(_lara(), _batches(4, size=4), normalizers=[_normal_normalizer()])
    assert r0["num_samples"] == 16 and r0["num_batches"] == 4
    # Sampling noise differs per rank; everything deterministic must match one process over all batches.
    same = [k for k in single if k.startswith(("codebook/", "lam/psnr", "lam/recon_mse", "probe/", "action/num"))]
    assert len(same) > 6
    for k in same:
        assert r0[k] == pytest.approx(single[k], rel=1e-6, abs=1e-9), k
    assert set(r0) == set(single)


# --- report -----------------------------------------------------------------------------------------


def test_report_has_table_per_dim_plot_and_history(tmp_path: Path) -> None:
    metrics = {"loss": 0.5, "action/l1": 0.3, "action/mse": 0.2, "action/l1/dim0": 0.1, "action/mse/dim0": 0.01,
               "action/l1/dim1": 0.5, "action/mse/dim1": 0.4, "action_raw/l1/dim0": 2.0, "action_raw/mse/dim0": 4.0,
               "lam/psnr": 25.0, "probe/r2": 0.7, "probe/r2/dim0": 0.7}
    history = [{"step": 10, "eval/loss": 0.9, "eval/action/l1": 0.6, "loss": 123.0},
               {"step": 20, **{f"eval/{k}": v for k, v in metrics.items()}}]
    md = write_report(metrics, tmp_path / "rep", history=history, info={"checkpoint": "x"})
    text = md.read_text()
    assert md.name == "eval_report.md"
    assert "| `action/l1` | 0.3 |" in text and "| `lam/psnr` | 25 |" in text and "**checkpoint**: x" in text
    assert "| 1 | 0.5 | 0.4 | n/a | n/a |" in text  # per-dim table (no raw value for dim 1)
    for png in ("action_error_per_dim.png", "eval_history.png"):
        assert f"]({png})" in text
        assert (md.parent / png).read_bytes()[:8] == PNG
    plain = write_report({"loss": 1.0}, tmp_path / "plain")
    assert not list(plain.parent.glob("*.png")) and "## Metrics" in plain.read_text()


# --- the trainer's periodic evaluation and the CLI ---------------------------------------------------


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, tiny_world_args: list[str]) -> Path:
    run_dir = tmp_path_factory.mktemp("evalrun") / "run"
    run_deepspeed([*tiny_world_args, f"--run.dir={run_dir}", "--trainer.max_steps=2", "--eval.every_steps=2",
                   "--eval.max_batches=2", "--logging.measure_flops=false", "--checkpoint.every_steps=0"],
                  num_ranks=1)
    return run_dir


@pytest.mark.slow
def test_periodic_evaluation_is_logged_with_the_step(evaluated_run: Path) -> None:
    records = read_jsonl(evaluated_run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert not any(k.startswith("eval/") for k in records[0])
    r = records[1]
    assert r["loss"] > 0 and r["eval/loss"] > 0 and r["eval/num_samples"] == 2 * 4  # 2 micro batches of 4
    for k in ("eval/action/l1", "eval/action_raw/l1", "eval/lam/psnr", "eval/codebook/perplexity", "eval/time_s"):
        assert isinstance(r[k], float), k
    report = evaluated_run / "eval" / "eval_report.md"
    assert "eval/" not in report.read_text() and "`action/l1`" in report.read_text()
    assert (report.parent / "action_error_per_dim.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_cli_on_a_run_dir_and_an_export(evaluated_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from lavla.launcher.evaluate import main
    from lavla.trainer.export import export_policy

    assert main(["--checkpoint", str(evaluated_run), "--max-batches", "2", "--batch-size", "4",
                 "--out", str(tmp_path / "a")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_samples"] == 8 and {"action/l1", "lam/psnr", "probe/num_fit"} <= set(metrics)
    assert (tmp_path / "a" / "eval_report.md").is_file()
    assert json.loads((tmp_path / "a" / "eval_metrics.json").read_text())["info"]["split"] == "val"

    export_policy(evaluated_run, tmp_path / "export")
    assert main(["--checkpoint", str(tmp_path / "export"), "--data", str(evaluated_run / "config.yaml"),
                 "--max-batches", "2", "--batch-size", "4", "--out", str(tmp_path / "b")]) == 0
    assert json.loads(capsys.readouterr().out) == metrics  # same policy, same batches, same seed

    assert main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(tmp_path / "empty")]) == 2
    assert "not a policy export" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "export"), "--data.image_size=32"]) == 2
    assert "window shape" in capsys.readouterr().err


@pytest.mark.slow
def test_a_missing_eval_split_fails_before_training(evaluated_run: Path) -> None:
    from lavla.trainer.config_io import load_config
    from lavla.trainer.evaluate import PeriodicEvaluator

    cfg = load_config(["--config", str(evaluated_run / "config.yaml"), "--eval.every_steps=5", "--eval.split=nosuch"])
    with pytest.raises(RuntimeError, match=r"eval.split='nosuch'.*unknown split 'nosuch'"):
        PeriodicEvaluator(cfg, evaluated_run, torch.device("cpu"))


def test_a_shorter_prediction_is_scored_on_its_own_steps() -> None:
    """LAPA stage 3 predicts one step of an N-step chunk: only that step is compared."""
    import torch

    from lavla.model.recipe import Capabilities, Recipe
    from lavla.trainer.evaluate import evaluate

    class OneStep(Recipe):
        capabilities = Capabilities(predicts_actions=True, closed_loop=True)

        def forward(self, batch):  # noqa: ANN001, ANN202
            return torch.zeros(()), {}

        def predict_action(self, batch):  # noqa: ANN001, ANN202
            return batch["action"][:, :1].clone()  # exact on step 0

    batch = random_batch(4)
    batch["action_valid"][:] = True
    metrics = evaluate(OneStep(), [batch])
    assert metrics["action/l1"] == 0.0 and metrics["action/mse"] == 0.0


# --- does the policy use what it is given? ------------------------------------------------------------


class _Probe(Recipe):
    """A stand-in policy whose actions come from one input, to check each diagnostic sees it."""

    capabilities = Capabilities(predicts_actions=True, closed_loop=True)

    def __init__(self, source: str, constant: torch.Tensor | None = None) -> None:
        super().__init__()
        self.source, self.constant = source, constant

    def forward(self, batch):  # noqa: ANN001, ANN202
        return torch.zeros(()), {}

    def predict_action(self, batch):  # noqa: ANN001, ANN202
        shape = batch["action"].shape
        if self.source == "oracle":
            return batch["action"].clone()
        if self.source == "constant":
            return self.constant.expand(shape).clone()
        if self.source == "image":
            value = batch["image_primary"][:, 0, 0, 0].float() / 255.0  # one pixel
        else:  # "language"
            value = torch.tensor([float(len(s)) for s in batch["language"]]) / 10.0
        return value[:, None, None].expand(shape).clone()


def _probe_batches() -> list[dict[str, Any]]:
    batches = _batches(3)
    for i, b in enumerate(batches):
        b["language"] = ["pick", "push the block", "open", "move left slowly"][: len(b["language"]) // 2] * 2
        b["language"] = [f"{s} {'x' * (i + j)}" for j, s in enumerate(b["language"])]
    return batches


def test_median_deviation_and_rolled_inputs() -> None:
    from lavla.trainer.evaluate import median_deviation, roll_inputs

    assert median_deviation(torch.tensor([1.0, 2.0, 3.0, 10.0])) == pytest.approx((1 + 0 + 1 + 8) / 4)
    assert median_deviation(torch.full((5,), 3.0)) == 0.0 and math.isnan(median_deviation(torch.zeros(0)))
    b = random_batch(3)
    b["language"] = ["a", "b", "c"]
    img = roll_inputs(b, "image")
    assert torch.equal(img["image_primary"][1], b["image_primary"][0]) and torch.equal(img["image_wrist"][0], b["image_wrist"][2])
    assert torch.equal(img["has_wrist"], torch.roll(b["has_wrist"], 1)) and img["language"] == ["a", "b", "c"]
    assert torch.equal(img["action"], b["action"]) and torch.equal(img["proprio"], b["proprio"])
    lang = roll_inputs(b, "language")
    assert lang["language"] == ["c", "a", "b"] and torch.equal(lang["image_primary"], b["image_primary"])


def test_skill_spread_and_swap_sensitivity_see_what_the_policy_uses() -> None:
    batches = _probe_batches()
    oracle = evaluate(_Probe("oracle"), batches)
    assert oracle["action/skill"] == pytest.approx(1.0) and oracle["action/spread_ratio"] == pytest.approx(1.0)
    assert oracle["action/image_swap"] == 0.0 and oracle["action/language_swap"] == 0.0
    assert oracle["action/median_l1"] > 0.3 and all(oracle[f"action/skill/dim{d}"] == pytest.approx(1.0) for d in range(A))

    # The best constant: the per-dim median of the scored targets. No skill, no spread, no sensitivity.
    mask = [supervision_mask(b) for b in batches]
    median = torch.stack([torch.cat([b["action"][..., d][m[..., d]] for b, m in zip(batches, mask)]).median()
                          for d in range(A)])
    const = evaluate(_Probe("constant", median), batches)
    assert const["action/skill"] == pytest.approx(0.0, abs=1e-6)
    assert const["action/spread_ratio"] == 0.0 and const["action/image_swap_rel"] == 0.0
    assert const["action/median_l1"] == pytest.approx(oracle["action/median_l1"])
    worse = evaluate(_Probe("constant", median + 1.0), batches)
    assert worse["action/skill"] < -0.5  # a wrong constant is worse than no skill

    seeing = evaluate(_Probe("image"), batches)
    assert seeing["action/image_swap"] > 0.1 and seeing["action/language_swap"] == 0.0
    assert seeing["action/image_swap_rel"] == pytest.approx(seeing["action/image_swap"] / seeing["action/median_l1"])
    reading = evaluate(_Probe("language"), batches)
    assert reading["action/language_swap"] > 0.1 and reading["action/image_swap"] == 0.0
    off = evaluate(_Probe("image"), batches, sensitivity=False)
    assert "action/image_swap" not in off and off["action/l1"] == seeing["action/l1"]


def test_sensitivity_replays_the_noise_and_leaves_other_metrics_exact() -> None:
    """The flow head samples noise: the swapped predictions reuse the first call's noise, and the other
    metrics are bit-identical with and without the extra calls."""
    model = _lara()
    batches = _batches(2)
    with_swaps = evaluate(model, batches)
    without = evaluate(model, batches, sensitivity=False)
    assert {k: v for k, v in with_swaps.items() if k in without} == without
    assert {"action/skill", "action/spread_ratio", "action/image_swap_rel", "action/language_swap_rel"} <= set(with_swaps)
    # The same inputs with the same noise give the same actions: a no-op "swap" moves nothing.
    same = [dict(b, language=[b["language"][0]] * len(b["language"])) for b in batches]
    assert evaluate(model, same)["action/language_swap"] == 0.0
