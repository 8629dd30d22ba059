"""Resume a tensor-parallel checkpoint at TP=1, exactly: a TP-aware universal conversion.

DeepSpeed's ``ds_to_universal`` cannot do it: it trips over megatron's ``_extra_state`` entries,
and merges every TP-sharded tensor by plain concatenation, which is wrong for megatron's fused
layouts (``linear_qkv`` groups q/k/v per KV group; ``linear_fc1`` holds ``[gate_r; up_r]`` per
rank). It is right, though, for one TP rank at a time. So:

1. each TP rank's files (a symlink view renamed to ``mp_rank_00``, ``consolidate.tp_rank_view``)
   go through ``ds_to_universal`` alone: the full (data-parallel-merged) fp32 weights and Adam
   moments of that rank's shards, under megatron names;
2. every optimizer state (``fp32``, ``exp_avg``, ``exp_avg_sq``) is merged across TP ranks with the
   exact inverses of the sharding (``consolidate.merge_tp_state``: the layouts are linear, so the
   moments follow the weights) and written under the TP=1 model's Hugging Face names, in the
   same file format ``ds_to_universal`` writes (ZeRO-1/2: ``{'param', 'cat_dim'}`` dicts and a
   ``step``; ZeRO-3: flat tensors);
3. the module states files are rewritten to the TP=1 names (buffers kept, megatron's
   ``_extra_state`` dropped).

The result is an ordinary universal checkpoint of the TP=1 model (the *canonical* form), which the
existing resume path loads at any data-parallel size (``checkpoint.load_universal``).

Resuming at TP = k > 1 (from any saved layout) goes one step further: each TP rank's universal
checkpoint is cut from the canonical one with the sharding itself (``consolidate.shard_tp_state``),
under the TP model's names and shapes, into ``<checkpoint>/universal_tp<k>_rank<r>/``, and each
rank loads its own. DeepSpeed then sees parameters whose universal tensors already have the local
shape, which it partitions over the (new) data-parallel group as it does at TP=1.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lavla.trainer.tensor_parallel.consolidate import merge_tp_state, saved_tensor_parallel_size, tp_rank_view

OPTIMIZER_STATES = ("fp32", "exp_avg", "exp_avg_sq")
"""Per-parameter files of a universal checkpoint that hold tensors shaped like the parameter."""


def _zero3_shapes(universal: Path) -> dict[str, torch.Size]:
    states = torch.load(next(universal.glob("zero_pp_rank_0_*model_states.pt")), map_location="cpu",
                        weights_only=False)  # written by this job's DeepSpeed a moment ago
    return {name: shape for group in states["param_shapes"] for name, shape in group.items()}


def _read(universal: Path, key: str, shapes: dict[str, torch.Size] | None) -> dict[str, Tensor]:
    """Every parameter's ``key`` state of one TP rank's universal checkpoint, shaped."""
    out = {}
    for folder in sorted((universal / "zero").iterdir()):
        f = folder / f"{key}.pt"
        if not f.is_file():
            continue
        value = torch.load(f, map_location="cpu", weights_only=False)
        tensor = value["param"] if isinstance(value, dict) else value
        out[folder.name] = tensor.view(shapes[folder.name]) if shapes is not None else tensor
    return out


def _merge_module_states(universals: list[Path], out: Path, model_tp1: nn.Module, zero3: bool) -> None:
    tp1_keys = list(model_tp1.state_dict().keys())
    shapes = {n: p.shape for n, p in model_tp1.named_parameters() if p.requires_grad}
    for f in sorted(universals[0].glob("*model_states.pt")):
        ranks = [torch.load(u / f.name, map_location="cpu", weights_only=False) for u in universals]
        states = ranks[0]
        if zero3:  # parameters are empty placeholders here; only buffers carry values
            module0 = states["module"]
            states["module"] = {k: module0[k] if k in module0 else torch.empty(0) for k in tp1_keys}
        else:
            states["module"] = merge_tp_state([r["module"] for r in ranks], model_tp1)
        states["buffer_names"] = [b for b in states.get("buffer_names", []) if b in states["module"]]
        states["param_shapes"] = [shapes]
        states["mp_world_size"] = 1
        torch.save(states, out / f.name)


def convert_tp_to_universal(ckpt: Path, out: Path, model_tp1: nn.Module, workers: int = 1) -> None:
    """Write the TP=1 universal form of the TP-sharded checkpoint ``ckpt`` into ``out`` (new dir).
    ``model_tp1``: the model built at TP=1 from the checkpoint's config."""
    from lavla.trainer.universal import run_ds_to_universal

    tp = saved_tensor_parallel_size(ckpt)
    with tempfile.TemporaryDirectory(prefix=".tp_universal_", dir=ckpt) as tmp:
        scratch = Path(tmp)
        universals = []
        for r in range(tp):
            u = scratch / f"universal_tp{r}"
            run_ds_to_universal(tp_rank_view(ckpt, r, scratch, single_rank_metadata=True), u, workers)
            universals.append(u)
        zero3 = not (universals[0] / "mp_rank_00_model_states.pt").is_file()
        shapes = [_zero3_shapes(u) if zero3 else None for u in universals]
        (out / "zero").mkdir(parents=True)
        for f in (universals[0] / "zero").iterdir():  # global optimizer state (param groups, loss scale, step)
            if f.is_file():
                shutil.copyfile(f, out / "zero" / f.name)
        for key in OPTIMIZER_STATES:
            merged = merge_tp_state([_read(u, key, s) for u, s in zip(universals, shapes)], model_tp1, strict=False)
            for name, tensor in merged.items():
                (out / "zero" / name).mkdir(exist_ok=True)
                value: Any = tensor.flatten().clone() if zero3 else {"cat_dim": 0, "param": tensor.contiguous()}
                torch.save(value, out / "zero" / name / f"{key}.pt")
        if not zero3:
            step = next((universals[0] / "zero").glob("*/step.pt"))
            for folder in (out / "zero").iterdir():
                if folder.is_dir():
                    shutil.copyfile(step, folder / "step.pt")
        _merge_module_states(universals, out, model_tp1, zero3)


def tp_rank_tag(tp_size: int, tp_rank: int) -> str:
    """Checkpoint sub-directory (DeepSpeed tag) of TP rank ``tp_rank``'s universal form at TP ``tp_size``."""
    return f"universal_tp{tp_size}_rank{tp_rank}"


def _local_shape(p: nn.Parameter) -> torch.Size:
    return getattr(p, "ds_shape", p.shape)  # ZeRO-3 leaves an empty local tensor


def write_tp_rank_universal(canonical: Path, out: Path, model_tp: nn.Module, tp_rank: int, tp_size: int) -> None:
    """TP rank ``tp_rank``'s universal checkpoint at TP ``tp_size`` from the ``canonical`` (TP=1) one,
    written into ``out`` (a new directory). ``model_tp``: the parallelized model this rank trains."""
    from lavla.trainer.tensor_parallel.consolidate import shard_tp_state

    zero3 = not (canonical / "mp_rank_00_model_states.pt").is_file()
    shapes = _zero3_shapes(canonical) if zero3 else None
    local_shapes = {n: _local_shape(p) for n, p in model_tp.named_parameters()}
    (out / "zero").mkdir(parents=True)
    for f in (canonical / "zero").iterdir():
        if f.is_file():
            shutil.copyfile(f, out / "zero" / f.name)
    for key in OPTIMIZER_STATES:
        local = shard_tp_state(_read(canonical, key, shapes), model_tp, tp_rank, tp_size)
        for name, tensor in local.items():
            if name in local_shapes and tensor.shape != local_shapes[name]:
                raise RuntimeError(f"{canonical}: {name} {key} shards to {tuple(tensor.shape)}, the model has "
                                   f"{tuple(local_shapes[name])}")
            (out / "zero" / name).mkdir(exist_ok=True)
            value: Any = tensor.flatten().clone() if zero3 else {"cat_dim": 0, "param": tensor.contiguous()}
            torch.save(value, out / "zero" / name / f"{key}.pt")
    if not zero3:
        step = next((canonical / "zero").glob("*/step.pt"))
        for folder in (out / "zero").iterdir():
            if folder.is_dir():
                shutil.copyfile(step, folder / "step.pt")
    # DeepSpeed checks that a tag holds one model-states file per TP rank and reads its own: every
    # rank's directory gets all of them (shapes match across TP ranks; the values are each rank's).
    model_keys = model_tp.state_dict(keep_vars=True)
    trainable = {n: _local_shape(p) for n, p in model_tp.named_parameters() if p.requires_grad}
    for f in sorted(canonical.glob("*model_states.pt")):
        for rank in range(tp_size):
            states = torch.load(f, map_location="cpu", weights_only=False)  # written by this run's conversion
            full = states["module"]
            if zero3:  # parameters are empty placeholders; buffers keep their values
                module = {k: full[k] if k in full else (None if k.endswith("_extra_state") else torch.empty(0))
                          for k in model_keys}
            else:
                sharded = shard_tp_state(full, model_tp, rank, tp_size)
                module = {k: sharded.get(k) for k in model_keys}
                missing = [k for k, v in module.items() if v is None and not k.endswith("_extra_state")]
                if missing:
                    raise RuntimeError(f"{f}: no value for {missing[:5]} after sharding to TP {tp_size}")
            states["module"] = module
            states["buffer_names"] = [b for b in states.get("buffer_names", []) if b in module]
            states["param_shapes"] = [trainable]
            states["mp_world_size"] = tp_size
            torch.save(states, out / f.name.replace("mp_rank_00", f"mp_rank_{rank:02d}"))
