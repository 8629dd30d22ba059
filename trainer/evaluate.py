"""Offline evaluation of a policy on held-out batches: metrics, a Markdown report with plots, and the
trainer's periodic evaluation.

``evaluate(model, batches, normalizers=...)`` runs a recipe module (a ``model.recipe.Recipe``) over a
finite iterable of batches in the ``data_service.schema`` layout, under ``torch.no_grad`` and in
eval mode (the module's train/eval mode and the torch RNG streams are restored afterwards), and
returns a flat ``{metric: float}``. Which metrics exist follows the recipe's declared capabilities
(``predicts_actions``: the action rows; ``latent_targets``: token accuracy; ``has_lam``: the LAM,
codebook and probe rows):

=============================  =====================================================================
``loss``, ``loss/<term>``, ..  the recipe's own ``forward`` on the held-out batches (mean over batches),
                               with its other metrics (``align/cos``, ``lam/perplexity``...) as returned
``action/l1``, ``action/mse``  ``predict_action`` vs the normalized ground truth over real dims of valid
                               steps of samples with actions; ``action/l1_step0`` (first step only:
                               what a closed-loop controller executes first); per dim
                               ``action/{l1,mse}/dim<i>``
``action_raw/...``             the same in the datasets' raw units (only with ``normalizers``): both
                               sides go through ``Normalizer.unnormalize`` (bounds modes: the ground
                               truth is the clipped value the model was trained on)
``action/skill``               skill against the median predictor: 1 - L1 / L1 of the eval set's own
                               per-dim median (0: no better than a constant; 1: exact), pooled and per
                               dim (``action/skill/dim<i>``, ``action/median_l1[/dim<i>]``)
``action/spread_ratio``        spread of the predictions over spread of the targets (mean absolute
                               deviation from the median), pooled and per dim: near 0 = a policy that
                               predicts nearly the same action everywhere
``action/image_swap``,         how far predictions move when the batch's images (every camera) or its
``action/language_swap``       instructions are rolled by one sample, same noise: mean |Δ| over the
                               scored entries and its ratio to the target spread (``..._rel``), pooled
                               and per dim. A policy that ignores its images scores ~0
``latent/token_acc``           ``predict_latents`` vs the targets the recipe trains on (the online LAM's
                               ids, offline labels, or the LA-Tok tokenizer's codes)
``lam/recon_mse``, ``lam/psnr`` the LAM's reconstruction of x_{t+H} from (x_t, quantized latent): MSE in
                               its output space and mean per-image PSNR of [-1,1] images (pixel LAMs),
                               capped at ``PSNR_CAP_DB``
``codebook/perplexity``,       LAM code usage over the whole eval set (histogram of every id):
``codebook/active_codes``      exp(entropy), codes used at least once, and their share of the codebook
``probe/...``                  linear probes (``model/probe.py``) from the LAM latent to the true motion
                               over the LAM window: ridge R^2 per dim from the continuous latent
                               (``probe/r2``, ``probe/r2/dim<i>``) and from one-hot tokens
                               (``probe/r2_tokens``); dominant signed translation axis accuracy
                               (``probe/direction_acc``, ``..._tokens``) against ``probe/direction_chance``
=============================  =====================================================================

The probe target is the sum of the first ``probe_horizon`` valid actions of the chunk (raw units
when ``normalizers`` are given: signs are meaningful there), i.e. the motion between x_t and
x_{t+H} with ``probe_horizon = H``, as ``launcher/lam_probe.py``. Rows are ordered by ``sample_id``;
the first ``probe_fit_frac`` fit the probe, the rest score it (windows of one episode may fall on
both sides; ``python -m lavla.launcher.lam_probe`` splits by episode).

Distributed (``distributed=True``, used by the trainer under ZeRO-3): every rank passes its own shard
with the same number of batches, the module runs the same calls on every rank whatever the data
holds (parameter gathering and quantizer statistics are collective), metric sums are all-reduced,
probe rows gathered, and every rank returns the same dict.

``write_report`` writes ``eval_report.md`` with PNG plots; :class:`PeriodicEvaluator` is the
trainer's ``eval.every_steps`` hook (``eval/<metric>`` in metrics.jsonl and wandb).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from lavla.data_service.schema import supervision_mask
from lavla.model.recipe import capabilities_of
from lavla.trainer import distributed as dist_utils

log = logging.getLogger(__name__)

__all__ = ["PSNR_CAP_DB", "ActionErrors", "PeriodicEvaluator", "codebook_usage", "evaluate",
           "linear_probe", "masked_action_errors", "psnr", "supervision_mask", "write_report"]

PSNR_CAP_DB = 100.0
"""PSNR of a perfect reconstruction (MSE 0) is infinite; averages use this cap instead."""

REPORT_FILE = "eval_report.md"
PER_DIM_PNG = "action_error_per_dim.png"
HISTORY_PNG = "eval_history.png"

# --------------------------------------------------------------------------------------------------
# Pure functions: tensors in, numbers out.
# --------------------------------------------------------------------------------------------------


class ActionErrors(NamedTuple):
    """Per-dim sums of a masked comparison (float64 [A] each): reducible over batches and ranks."""

    abs_sum: Tensor
    sq_sum: Tensor
    count: Tensor


def masked_action_errors(pred: Tensor, target: Tensor, mask: Tensor) -> ActionErrors:
    """Sums over (sample, step) of |pred - target| and (pred - target)^2 per action dim where ``mask``
    [B,N,A] is True, and the number of such entries. Masked entries (NaN included) count nothing."""
    diff = pred.double() - target.double()
    diff = torch.where(mask.bool(), diff, torch.zeros_like(diff))
    dims = tuple(range(diff.dim() - 1))
    return ActionErrors(diff.abs().sum(dims), diff.pow(2).sum(dims), mask.bool().sum(dims).double())


def median_deviation(values: Tensor) -> float:
    """Mean |v - median(v)|: the L1 of the best constant predictor of ``values`` (1-D), i.e. their
    spread in the units of an L1 error."""
    v = values.double().flatten()
    return float((v - v.median()).abs().mean()) if v.numel() else float("nan")


def roll_inputs(batch: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``batch`` with its images (``what="image"``: every camera and ``has_wrist``) or its
    instructions (``"language"``) moved one sample along, everything else unchanged."""
    keys = [k for k in batch if k.startswith("image_") or k == "has_wrist"] if what == "image" else ["language"]
    out = dict(batch)
    for k in keys:
        v = batch[k]
        out[k] = torch.roll(v, 1, dims=0) if isinstance(v, Tensor) else [*v[-1:], *v[:-1]]
    return out


def psnr(pred: Tensor, target: Tensor, *, data_range: float = 2.0, cap: float | None = PSNR_CAP_DB) -> Tensor:
    """Per-image PSNR in dB, ``10 log10(data_range^2 / MSE)`` (``data_range`` 2 for [-1,1] images,
    so ``10 log10(4 / MSE)``); float64 [B]. MSE 0 gives inf, or ``cap`` when given."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    out = 10.0 * torch.log10(data_range**2 / mse)  # mse 0 -> inf
    return out.clamp(max=cap) if cap is not None else out


def codebook_usage(hist: Tensor) -> tuple[float, int]:
    """``(perplexity, active codes)`` of a code-id histogram [K]: exp(entropy of the usage
    distribution) (K for uniform use, 1 for a collapsed codebook) and the codes used at least once."""
    counts = hist.double()
    total = float(counts.sum())
    if total <= 0:
        return 0.0, 0
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return float(entropy.exp()), int((counts > 0).sum())


def linear_probe(features: Tensor, motion: Tensor, *, ids: Tensor | None = None, num_codes: int = 0,
                 fit_frac: float = 0.5, direction_dims: Sequence[int] = (0, 1, 2), min_norm: float = 0.05,
                 l2: float = 1e-2, min_rows: int = 4) -> dict[str, float]:
    """Linear probes from latents to motion, fit on the first ``fit_frac`` of the rows, scored on the rest.

    ``features`` [n,F] continuous latents; ``motion`` [n,A] targets, NaN where a dim is not real
    for that row; ``ids`` [n,Q] token ids (optional, for the one-hot probes). Target dims: real in
    every row and varying in both parts (constant dims have no R^2). Reuses ``model.probe``:
    closed-form ridge R^2 per dim (``probe/r2/dim<i>``, ``probe/r2``, ``probe/r2_tokens``) and a
    logistic probe of the dominant signed axis of ``motion[:, direction_dims]`` (``direction_labels``;
    rows moving less than ``min_norm`` are dropped) scored against the majority class. Returns {}
    when there are fewer than ``min_rows`` rows on either side or no usable target dim.
    """
    from lavla.model.probe import (
        direction_labels,
        fit_logistic_probe,
        fit_ridge_probe,
        one_hot_ids,
    )

    n = features.shape[0]
    n_fit = round(n * fit_frac)
    if n_fit < min_rows or n - n_fit < min_rows:
        return {}
    x = features.double()
    y = motion.double()
    fit, test = slice(0, n_fit), slice(n_fit, n)
    real = ~torch.isnan(y).any(0)
    varies = (y[fit].std(0) > 1e-6) & (y[test].std(0) > 1e-6)
    dims = [int(d) for d in torch.nonzero(real & varies).flatten()]
    if not dims:
        return {}
    yd = y[:, dims]
    out: dict[str, float] = {"probe/num_fit": float(n_fit), "probe/num_test": float(n - n_fit)}
    reg = fit_ridge_probe(x[fit], yd[fit], x[test], yd[test], l2=l2)
    out["probe/r2"] = reg.mean_r2
    out.update({f"probe/r2/dim{d}": r for d, r in zip(dims, reg.r2)})
    onehot = one_hot_ids(ids, num_codes).double() if ids is not None and num_codes > 0 else None
    if onehot is not None:
        out["probe/r2_tokens"] = fit_ridge_probe(onehot[fit], yd[fit], onehot[test], yd[test], l2=l2).mean_r2

    cols = tuple(dims.index(d) for d in direction_dims if d in dims)
    if cols:
        labels, keep = direction_labels(yd.numpy(), cols, min_norm)
        labels_t, keep_t = torch.from_numpy(labels), torch.from_numpy(keep)
        kf, kt = keep_t[fit], keep_t[test]
        if int(kf.sum()) >= 2 and int(kt.sum()) >= 1:
            yf, yt = labels_t[fit][kf], labels_t[test][kt]
            n_cls = 2 * len(cols)
            cont = fit_logistic_probe(x[fit][kf], yf, x[test][kt], yt, n_cls)
            out.update({"probe/direction_acc": cont.accuracy, "probe/direction_chance": cont.chance,
                        "probe/direction_num_test": float(cont.num_test)})
            if onehot is not None:
                out["probe/direction_acc_tokens"] = fit_logistic_probe(onehot[fit][kf], yf, onehot[test][kt], yt,
                                                                       n_cls).accuracy
    return out


def raw_actions(actions: Tensor, dataset_id: Tensor, normalizers: Any) -> Tensor:
    """Normalized [B,N,A] -> raw units per sample's dataset (``normalizers[dataset_id]``), float64 on
    CPU; NaN beyond each dataset's real dims and for datasets without actions."""
    x = actions.detach().float().cpu()
    out = torch.full(x.shape, float("nan"), dtype=torch.float64)
    ds = dataset_id.cpu()
    for d in sorted(set(ds.tolist())):
        norm = normalizers[d]
        dim = norm.stats.action.dim
        if dim == 0:
            continue
        rows = ds == d
        out[rows, ..., :dim] = torch.from_numpy(norm.unnormalize(x[rows][..., :dim].numpy(), "action")).double()
    return out


# --------------------------------------------------------------------------------------------------
# Accumulation (and its reduction over ranks).
# --------------------------------------------------------------------------------------------------


class _Sums:
    """Named float64 sums on CPU plus the probe rows; all-reducible by key."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.rows: list[dict[str, Tensor]] = []
        self.values: dict[str, list[list[Tensor]]] = {}  # name -> per dim -> chunks of scored entries

    def add_values(self, name: str, x: Tensor, mask: Tensor) -> None:
        """Keep the entries of ``x`` [B,N,A] where ``mask`` holds, per action dim (float32, CPU)."""
        x, mask = x.detach().float().cpu(), mask.bool().cpu()
        per_dim = self.values.setdefault(name, [[] for _ in range(x.shape[-1])])
        for d in range(x.shape[-1]):
            per_dim[d].append(x[..., d][mask[..., d]])

    def joined(self, name: str) -> list[Tensor]:
        return [torch.cat(chunks) if chunks else torch.zeros(0) for chunks in self.values.get(name, [])]

    def add(self, key: str, value: Tensor | float) -> None:
        v = torch.as_tensor(value).detach().double().cpu().reshape(-1)
        self.sums[key] = self.sums[key] + v if key in self.sums else v.clone()

    def add_mean(self, key: str, value: Tensor | float) -> None:
        self.add(f"mean:{key}", torch.tensor([float(torch.as_tensor(value).detach().float().mean()), 1.0]))

    def add_errors(self, prefix: str, e: ActionErrors) -> None:
        self.add(f"{prefix}:abs", e.abs_sum)
        self.add(f"{prefix}:sq", e.sq_sum)
        self.add(f"{prefix}:n", e.count)

    def all_reduce(self) -> None:
        """Sum every key over the data-parallel ranks (keys missing on a rank count 0) and gather the
        probe rows. Collective. (TP ranks of one replica hold the same results: counted once.)"""
        if not dist.is_initialized():
            return
        group = dist_utils.data_parallel_group()
        n_ranks = dist.get_world_size(group)
        if n_ranks == 1:
            return
        shapes: list[Any] = [None] * n_ranks
        dist.all_gather_object(shapes, {k: v.numel() for k, v in self.sums.items()}, group=group)
        sizes: dict[str, int] = {}
        for s in shapes:
            for k, n in s.items():
                if sizes.setdefault(k, n) != n:
                    raise RuntimeError(f"evaluation metric {k!r} has {sizes[k]} values on one rank and {n} on another")
        keys = sorted(sizes)
        flat = torch.cat([self.sums.get(k, torch.zeros(sizes[k], dtype=torch.float64)) for k in keys]) if keys \
            else torch.zeros(0, dtype=torch.float64)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        flat = flat.to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        parts = flat.cpu().split([sizes[k] for k in keys])
        self.sums = dict(zip(keys, parts))
        gathered: list[Any] = [None] * n_ranks
        dist.all_gather_object(gathered, self.rows, group=group)
        self.rows = [r for rank_rows in gathered for r in rank_rows]
        everyone: list[Any] = [None] * n_ranks
        dist.all_gather_object(everyone, {k: self.joined(k) for k in self.values}, group=group)
        self.values = {}
        for theirs in everyone:  # every rank has the same action dims (data.max_action_dim)
            for k, per_dim in theirs.items():
                slots = self.values.setdefault(k, [[] for _ in per_dim])
                for d, t in enumerate(per_dim):
                    slots[d].append(t)


def _per_dim(out: dict[str, float], prefix: str, s: _Sums) -> None:
    n = s.sums.get(f"{prefix}:n")
    if n is None or float(n.sum()) == 0:
        return
    abs_sum, sq_sum = s.sums[f"{prefix}:abs"], s.sums[f"{prefix}:sq"]
    total = float(n.sum())
    out[f"{prefix}/l1"] = float(abs_sum.sum()) / total
    out[f"{prefix}/mse"] = float(sq_sum.sum()) / total
    out[f"{prefix}/num_entries"] = total
    for d in range(n.numel()):
        if n[d] > 0:
            out[f"{prefix}/l1/dim{d}"] = float(abs_sum[d] / n[d])
            out[f"{prefix}/mse/dim{d}"] = float(sq_sum[d] / n[d])


def _finalize(s: _Sums, *, num_codes: int, fit_frac: float, min_norm: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in s.sums.items():
        if k.startswith("mean:") and v[1] > 0:
            out[k[5:]] = float(v[0] / v[1])
    for k in ("num_batches", "num_samples"):
        if k in s.sums:
            out[k] = float(s.sums[k].sum())
    for prefix in ("action", "action_raw"):
        _per_dim(out, prefix, s)
    step0 = s.sums.get("action_step0:n")
    if step0 is not None and float(step0.sum()) > 0:
        out["action/l1_step0"] = float(s.sums["action_step0:abs"].sum() / step0.sum())
        if "action_raw_step0:n" in s.sums and float(s.sums["action_raw_step0:n"].sum()) > 0:
            out["action_raw/l1_step0"] = float(s.sums["action_raw_step0:abs"].sum() / s.sums["action_raw_step0:n"].sum())
    _skill_and_sensitivity(out, s)
    lat = s.sums.get("latent")
    if lat is not None and lat[1] > 0:
        out["latent/token_acc"] = float(lat[0] / lat[1])
        out["latent/num_tokens"] = float(lat[1])
    rec = s.sums.get("lam_recon")
    if rec is not None and rec[1] > 0:
        out["lam/recon_mse"] = float(rec[0] / rec[1])
    ps = s.sums.get("lam_psnr")
    if ps is not None and ps[1] > 0:
        out["lam/psnr"] = float(ps[0] / ps[1])
    hist = s.sums.get("codebook_hist")
    if hist is not None:
        perplexity, active = codebook_usage(hist)
        out["codebook/perplexity"] = perplexity
        out["codebook/active_codes"] = float(active)
        out["codebook/usage_frac"] = active / max(1, num_codes)
    if s.rows:
        rows = sorted(s.rows, key=lambda r: int(r["sample_id"]))  # world-size independent order
        feats = torch.stack([r["features"] for r in rows])
        motion = torch.stack([r["motion"] for r in rows])
        ids = torch.stack([r["ids"] for r in rows])
        out.update(linear_probe(feats, motion, ids=ids, num_codes=num_codes, fit_frac=fit_frac, min_norm=min_norm))
    return out


def _skill_and_sensitivity(out: dict[str, float], s: _Sums) -> None:
    """Skill against the median predictor, prediction spread and swap sensitivity (module docstring)."""
    targets, preds = s.joined("target"), s.joined("pred")
    n, abs_sum = s.sums.get("action:n"), s.sums.get("action:abs")
    if not targets or n is None:
        return
    med = torch.tensor([median_deviation(t) for t in targets], dtype=torch.float64)
    spread = torch.tensor([median_deviation(p) for p in preds], dtype=torch.float64)
    scored = (n > 0) & (med > 0)  # a constant target dim (no spread) has no skill to speak of
    if not bool(scored.any()):
        return
    med_sum = (med * n)[scored].sum()
    out["action/median_l1"] = float(med_sum / n[scored].sum())
    out["action/skill"] = float(1.0 - abs_sum[scored].sum() / med_sum)
    out["action/spread_ratio"] = float((spread * n)[scored].sum() / med_sum)
    for d in torch.nonzero(scored).flatten().tolist():
        out[f"action/median_l1/dim{d}"] = float(med[d])
        out[f"action/skill/dim{d}"] = float(1.0 - abs_sum[d] / (med[d] * n[d]))
        out[f"action/spread_ratio/dim{d}"] = float(spread[d] / med[d])
    for name in ("image_swap", "language_swap"):
        cnt, moved = s.sums.get(f"{name}:n"), s.sums.get(f"{name}:abs")
        if cnt is None or float(cnt[scored].sum()) == 0:
            continue
        mean_med = med_sum / n[scored].sum()
        out[f"action/{name}"] = float(moved[scored].sum() / cnt[scored].sum())
        out[f"action/{name}_rel"] = float(out[f"action/{name}"] / mean_med)
        for d in torch.nonzero(scored & (cnt > 0)).flatten().tolist():
            out[f"action/{name}/dim{d}"] = float(moved[d] / cnt[d])
            out[f"action/{name}_rel/dim{d}"] = float(moved[d] / cnt[d] / med[d])


# --------------------------------------------------------------------------------------------------
# The orchestrator.
# --------------------------------------------------------------------------------------------------


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_context(model: nn.Module, seed: int) -> Iterator[None]:
    """Eval mode, no grad, private RNG (seeded: the same batches give the same numbers; the caller's
    streams, e.g. training's noise, are untouched), all restored on exit."""
    was_training = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            model.train(was_training)


def _rng_state(gen: torch.Generator | None) -> tuple[Any, Any, Any]:
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda, gen.get_state() if gen is not None else None


def _set_rng_state(state: tuple[Any, Any, Any], gen: torch.Generator | None) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])
    if gen is not None:
        gen.set_state(state[2])


def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Any]], *, normalizers: Any = None, seed: int = 0,
             probe_horizon: int = 1, probe_fit_frac: float = 0.5, probe_min_norm: float = 0.05,
             sensitivity: bool = True, distributed: bool = False,
             device: torch.device | str | None = None) -> dict[str, float]:
    """Metrics of ``model`` (a recipe module) over ``batches`` (see the module docstring for the keys).

    ``normalizers``: ``normalizers[dataset_id]`` is the ``data_service.stats.Normalizer`` of that
    mixture entry (``DataBundle.normalizers``); adds the raw-unit metrics and makes the probe target
    raw. ``seed`` seeds the action sampler (a ``generator`` where ``predict_action`` accepts one)
    and the recipe forward's noise. ``probe_horizon``: actions summed into the probe target (the
    LAM stride H). ``sensitivity``: also predict on image- and instruction-rolled batches (two more
    ``predict_action`` calls per batch, replaying the first call's noise; the other metrics are
    unchanged either way). ``distributed``: all-reduce over the process group (collective; see above).
    """
    # TP ranks of one replica draw the same noise (their collectives need the same inputs).
    rank = dist_utils.data_parallel_rank() if distributed and dist.is_initialized() else 0
    dev = torch.device(device) if device is not None else _model_device(model)
    s = _Sums()
    caps = capabilities_of(model)
    lam = model.latent_action_model() if caps.has_lam else None
    num_codes = int(getattr(getattr(lam, "quantizer", None), "num_codes", 0) or 0) if lam is not None else 0
    act, lat_ok = caps.predicts_actions, caps.latent_targets
    kwargs: dict[str, Any] = {}
    if act and "generator" in inspect.signature(model.predict_action).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed + 7919 * rank)

    with _eval_context(model, seed + 7919 * rank):
        for raw_batch in batches:
            b = {k: (v.to(dev, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in raw_batch.items()}
            bsz = int(b["action"].shape[0])
            s.add("num_batches", 1.0)
            s.add("num_samples", float(bsz))
            # Every call below runs on every batch whatever it holds: under ZeRO-3 the ranks' module
            # calls must match one for one.
            loss, metrics = model(b)
            s.add_mean("loss", loss)
            for k in sorted(metrics):
                s.add_mean(k, metrics[k])

            mask = supervision_mask(b)
            target = b["action"]
            raw_target = raw_actions(target, b["dataset_id"], normalizers) if normalizers is not None else None
            if act:
                gen = kwargs.get("generator")
                noise = _rng_state(gen)
                pred = model.predict_action(b, **kwargs).float()
                # A recipe may predict fewer steps than the data's chunk (LAPA stage 3: one step):
                # score the steps it predicts, never a broadcast of its first step over the chunk.
                n = pred.shape[1]
                target, mask = target[:, :n], mask[:, :n]
                raw_target = raw_target[:, :n] if raw_target is not None else None
                s.add_errors("action", masked_action_errors(pred, target, mask))
                s.add_values("target", target, mask)
                s.add_values("pred", pred, mask)
                if sensitivity:  # same calls on every rank (ZeRO-3); a batch of one has nothing to swap
                    after = _rng_state(gen)
                    for what in ("image", "language"):
                        _set_rng_state(noise, gen)  # the same noise: only the inputs differ
                        moved = model.predict_action(roll_inputs(b, what), **kwargs).float()[:, :n]
                        if bsz > 1:
                            s.add_errors(f"{what}_swap", masked_action_errors(moved, pred, mask))
                    _set_rng_state(after, gen)
                s.add_errors("action_step0", masked_action_errors(pred[:, :1], target[:, :1], mask[:, :1]))
                if raw_target is not None:
                    raw_pred = raw_actions(pred, b["dataset_id"], normalizers)
                    raw_mask = mask.cpu() & ~torch.isnan(raw_target) & ~torch.isnan(raw_pred)
                    s.add_errors("action_raw", masked_action_errors(raw_pred, raw_target, raw_mask))
                    s.add_errors("action_raw_step0", masked_action_errors(raw_pred[:, :1], raw_target[:, :1],
                                                                          raw_mask[:, :1]))
            if lat_ok:
                pred_ids = model.predict_latents(b)
                tgt_ids, tgt_mask = model.latent_targets(b)
                if pred_ids.shape == tgt_ids.shape:
                    hit = (pred_ids.long() == tgt_ids) & tgt_mask
                    s.add("latent", torch.stack([hit.sum(), tgt_mask.sum()]))
                else:
                    log.warning("predict_latents gave %s ids, the targets are %s; latent/token_acc skipped",
                                tuple(pred_ids.shape), tuple(tgt_ids.shape))
            if lam is not None:
                x_t, x_th = b["image_primary"], b["image_future"]
                la = lam.encode(x_t, x_th)
                recon = lam.decode(x_t, la.quantized).float()
                target_img = (x_th.float() / 127.5 - 1.0)
                if recon.shape == target_img.shape:  # pixel LAMs
                    mse = (recon.double() - target_img.double()).pow(2).flatten(1).mean(1)
                    s.add("lam_recon", torch.stack([mse.sum(), torch.tensor(float(bsz), dtype=torch.float64)]))
                    s.add("lam_psnr", torch.stack([psnr(recon, target_img).sum(), torch.tensor(float(bsz), dtype=torch.float64)]))
                elif callable(getattr(lam, "features", None)):  # feature-space LAM (UniVLA)
                    feat = lam.features(x_th)
                    if feat.shape == recon.shape:
                        mse = (recon.double() - feat.double()).pow(2).flatten(1).mean(1)
                        s.add("lam_recon", torch.stack([mse.sum(), torch.tensor(float(bsz), dtype=torch.float64)]))
                if num_codes:
                    s.add("codebook_hist", torch.bincount(la.ids.flatten().long().cpu(), minlength=num_codes)[:num_codes])
                _add_probe_rows(s, b, la, raw_target, probe_horizon)

    if distributed:
        s.all_reduce()
    return _finalize(s, num_codes=num_codes, fit_frac=probe_fit_frac, min_norm=probe_min_norm)


def _add_probe_rows(s: _Sums, b: Mapping[str, Any], la: Any, raw_target: Tensor | None, horizon: int) -> None:
    """Per sample with actions and a valid first step: its latent and the summed motion over the window."""
    valid = b["action_valid"].bool().cpu()
    keep = b["has_action"].bool().cpu() & valid[:, 0]
    if not bool(keep.any()):
        return
    h = max(1, min(horizon, valid.shape[1]))
    actions = raw_target if raw_target is not None else b["action"].detach().double().cpu()
    real = b["action_dim_mask"].bool().cpu()
    steps = valid[:, :h, None]
    motion = torch.where(steps, torch.nan_to_num(actions[:, :h]), torch.zeros(())).sum(1)
    motion = torch.where(real & ~torch.isnan(actions[:, 0]), motion, torch.full_like(motion, float("nan")))
    feats = la.continuous.detach().float().flatten(1).cpu()
    ids = la.ids.detach().long().flatten(1).cpu()
    sid = b["sample_id"].cpu()
    for i in torch.nonzero(keep).flatten().tolist():
        s.rows.append({"sample_id": sid[i].clone(), "features": feats[i].clone(), "ids": ids[i].clone(),
                       "motion": motion[i].clone()})


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------

_HISTORY_KEYS = ("loss", "action/l1", "action/skill", "action/image_swap_rel", "action/language_swap_rel",
                 "action/mse", "action_raw/l1", "action/l1_step0", "latent/token_acc",
                 "lam/psnr", "lam/recon_mse", "codebook/perplexity", "codebook/active_codes", "probe/r2",
                 "probe/direction_acc")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.5g}"
    return "n/a" if v is None else str(v)


def _strip_eval(record: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl record (``eval/<metric>``) or a plain metrics dict -> plain metric names."""
    out = {k[5:]: v for k, v in record.items() if k.startswith("eval/")}
    if not out:
        out = dict(record)
    if "step" in record:
        out["step"] = record["step"]
    return out


def _dims(metrics: Mapping[str, Any], prefix: str) -> list[int]:
    head = f"{prefix}/dim"
    return sorted({int(k[len(head):]) for k in metrics if k.startswith(head) and k[len(head):].isdigit()})


def write_report(metrics: Mapping[str, float], out_dir: str | Path, history: Sequence[Mapping[str, Any]] | None = None,
                 *, info: Mapping[str, Any] | None = None) -> Path:
    """``<out_dir>/eval_report.md``: a table of every metric, per-dim action errors (and probe R^2)
    with a bar chart, and, when ``history`` (eval records with ``step``; ``eval/``-prefixed keys
    from metrics.jsonl are accepted) is given, metric-over-steps plots. PNGs go next to the Markdown.
    ``info``: extra lines for the header (checkpoint, split...). Returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = _strip_eval(metrics)
    m.pop("step", None)
    lines = ["# Evaluation report", ""]
    for k, v in (info or {}).items():
        lines.append(f"- **{k}**: {v}")
    if info:
        lines.append("")
    summary = {k: v for k, v in sorted(m.items()) if "/dim" not in k}
    lines += ["## Metrics", "", "| metric | value |", "|---|---:|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in summary.items()]

    dims = sorted(set(_dims(m, "action/l1")) | set(_dims(m, "action_raw/l1")))
    if dims:
        cols = [("action/l1", "L1"), ("action/mse", "MSE"), ("action_raw/l1", "raw L1"), ("action_raw/mse", "raw MSE"),
                ("action/median_l1", "median L1"), ("action/skill", "skill"), ("action/spread_ratio", "spread ratio"),
                ("action/image_swap_rel", "image swap / spread"),
                ("action/language_swap_rel", "instruction swap / spread")]
        cols = [(p, name) for p, name in cols if _dims(m, p)]
        lines += ["", "## Action error per dimension", "", "| dim | " + " | ".join(n for _, n in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for d in dims:
            lines.append(f"| {d} | " + " | ".join(_fmt(m.get(f"{p}/dim{d}")) for p, _ in cols) + " |")
        if _plot(_plot_per_dim, m, dims, out / PER_DIM_PNG):
            lines += ["", f"![action error per dimension]({PER_DIM_PNG})"]
    probe_dims = _dims(m, "probe/r2")
    if probe_dims:
        lines += ["", "## Linear probe R² per dimension (continuous LAM latent)", "", "| dim | R² |", "|---|---:|"]
        lines += [f"| {d} | {_fmt(m.get(f'probe/r2/dim{d}'))} |" for d in probe_dims]
    if history:
        recs = sorted((_strip_eval(r) for r in history if "step" in r), key=lambda r: int(r["step"]))
        keys = [k for k in _HISTORY_KEYS if any(isinstance(r.get(k), (int, float)) for r in recs)]
        if keys and _plot(_plot_history, recs, keys, out / HISTORY_PNG):
            lines += ["", "## Over training", "", f"![evaluation metrics over steps]({HISTORY_PNG})"]
    note = ("Action errors are over real dims of valid steps of samples with actions (normalized units unless "
            "`action_raw`); skill = 1 - L1 / (L1 of the eval set's per-dim median); spread ratio = the predictions' "
            "mean absolute deviation over the targets'; swaps roll images or instructions by one sample; "
            "PSNR of [-1,1] images is 10·log10(4/MSE), capped at "
            f"{PSNR_CAP_DB:g} dB. See `trainer/evaluate.py`.")
    lines += ["", note, ""]
    md = out / REPORT_FILE
    md.write_text("\n".join(lines))
    return md


def _plot(fn: Any, *args: Any) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on cluster nodes
    except ImportError:
        log.warning("matplotlib is not installed (pip install '.[dev]'); the report has no plots")
        return False
    fn(*args)
    return True


def _plot_per_dim(m: Mapping[str, Any], dims: list[int], path: Path) -> None:
    import matplotlib.pyplot as plt

    panels = [(p, t) for p, t in (("action", "normalized"), ("action_raw", "raw units")) if _dims(m, f"{p}/l1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 1, 3.5), squeeze=False)
    width = 0.4
    for ax, (p, title) in zip(axes[0], panels):
        xs = np.arange(len(dims))
        for j, (metric, label) in enumerate((("l1", "L1"), ("mse", "MSE"))):
            vals = [float(m.get(f"{p}/{metric}/dim{d}") or 0.0) for d in dims]
            ax.bar(xs + (j - 0.5) * width, vals, width, label=label)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(d) for d in dims])
        ax.set_xlabel("action dim")
        ax.set_title(f"action error ({title})")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_history(recs: list[Mapping[str, Any]], keys: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 2.8 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(int(r["step"]), float(r[k])) for r in recs if isinstance(r.get(k), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_title(k, fontsize="small")
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Data for evaluation and the trainer's periodic hook.
# --------------------------------------------------------------------------------------------------


def eval_data_config(data_cfg: Any, split: str, latent_labels: str = "") -> Any:
    """``data_cfg`` with every mixture entry read from ``split``, decoded in-process (no Ray service),
    no synthetic generation; ``latent_labels`` replaces the label store when given (episode indices
    are split-relative, so a held-out split needs its own store)."""
    entries = [dataclasses.replace(e, split=split) if split else e for e in data_cfg.datasets]
    return dataclasses.replace(data_cfg, datasets=entries, num_workers=0,
                               synthetic=dataclasses.replace(data_cfg.synthetic, enabled=False),
                               latent_labels=latent_labels or data_cfg.latent_labels)


def probe_horizon_of(bundle: Any, data_cfg: Any) -> int:
    """The LAM stride H of the first mixture dataset with actions (the probe's motion window)."""
    from lavla.data_service.pipeline import lam_stride

    for source, norm in zip(bundle.sources, bundle.normalizers):
        if norm.stats.action.dim > 0:
            return lam_stride(source, data_cfg)
    return 1


def windows_per_pass(bundle: Any) -> int:
    """Samples in one pass over the eval split (every valid window once)."""
    return int(sum(int(np.asarray(d.windows_per_episode).sum()) for d in bundle.plan.datasets))


def take_batches(client: Any, n: int) -> Iterator[dict[str, Any]]:
    for _ in range(n):
        yield client.next_micro_batch()


class PeriodicEvaluator:
    """``eval.every_steps``: every rank evaluates its own shard of the held-out split in lockstep.

    The eval data (``eval.split`` of every mixture entry) is opened at construction (collective:
    every rank, before training, so a missing split fails fast); each evaluation restarts it from
    the first sample, so every evaluation sees the same ``eval.max_batches`` x micro batch x world
    size held-out samples. Rank 0 keeps the history and writes the report.
    """

    def __init__(self, cfg: Any, run_dir: Path, device: torch.device) -> None:
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self.data: Any = None
        self.probe_horizon = 1
        self.history: list[dict[str, Any]] | None = None
        self._build()

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every_steps
        return every > 0 and (step % every == 0 or step == self.cfg.trainer.max_steps)

    def _build(self) -> None:
        from lavla.data_service.pipeline import build_data

        data_cfg = eval_data_config(self.cfg.data, self.cfg.eval.split, self.cfg.eval.latent_labels)
        try:
            self.data = build_data(data_cfg, rank=dist_utils.data_parallel_rank(),
                                   world_size=dist_utils.data_parallel_size(),
                                   micro_batch_size=self.cfg.trainer.micro_batch_size, grad_accum=1,
                                   is_local_leader=dist_utils.local_rank() == 0, barrier=dist_utils.barrier)
        except Exception as e:
            raise RuntimeError(f"cannot open the evaluation data (eval.split={self.cfg.eval.split!r}; "
                               f"eval.every_steps=0 disables evaluation): {e}") from e
        self.probe_horizon = probe_horizon_of(self.data, data_cfg)

    def run(self, module: nn.Module, step: int) -> dict[str, float]:
        """Evaluate (collective: every rank, same step); returns ``{eval/<metric>: value}`` on every rank."""
        t0 = time.perf_counter()
        client = self.data.client
        try:
            metrics = evaluate(module, take_batches(client, self.cfg.eval.max_batches),
                               normalizers=self.data.normalizers, seed=self.cfg.run.seed,
                               probe_horizon=self.probe_horizon, distributed=True, device=self.device)
        finally:
            client.close()  # the next evaluation restarts from the first held-out sample
        metrics["time_s"] = time.perf_counter() - t0
        if dist_utils.is_main():
            log.info("eval step %d: %s", step, ", ".join(f"{k} {metrics[k]:.4g}" for k in
                                                          ("loss", "action/l1", "action/skill", "action/image_swap_rel",
                                                           "action_raw/l1", "lam/psnr", "codebook/perplexity",
                                                           "probe/r2") if k in metrics))
            if self.cfg.eval.report:
                self._report(step, metrics)
        return {f"eval/{k}": v for k, v in metrics.items()}

    def _report(self, step: int, metrics: dict[str, float]) -> None:
        if self.history is None:  # a resumed run: earlier evaluations are in metrics.jsonl
            self.history = []
            path = self.run_dir / "metrics.jsonl"
            if path.is_file():
                for line in path.read_text().splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        rec = json.loads(line)
                        if any(k.startswith("eval/") for k in rec) and rec.get("step", step) < step:
                            self.history.append(_strip_eval(rec))
        self.history.append({"step": step, **metrics})
        try:
            write_report(metrics, self.run_dir / "eval", self.history,
                         info={"step": step, "split": self.cfg.eval.split,
                               "samples": int(metrics.get("num_samples", 0))})
        except Exception:  # a report must never stop a week-long run
            log.warning("writing the evaluation report failed", exc_info=True)

    def close(self) -> None:
        if self.data is not None:
            self.data.client.close()
