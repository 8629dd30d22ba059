"""TP-sharded DeepSpeed checkpoints back to TP=1 weights (files only, no process group).

A checkpoint written at TP > 1 holds one set of ZeRO files per TP rank (``mp_rank_XX`` in their
names), each with megatron's names and layouts for the TP parts. :func:`consolidate_tp_checkpoint`
runs DeepSpeed's ``zero_to_fp32`` on each TP rank's files (through a directory of renamed
symlinks, since ``zero_to_fp32`` reads ``mp_rank_00`` only), then merges the TP ranks with the
exact inverses of the sharding (``qwen3.megatron_to_hf``, ``dit.consolidate_dit_state``) into the
state dict of the model built at TP=1: Hugging Face names and layouts, so an export from TP=2 is
the same ``model.safetensors`` as one from TP=1, and ``load_policy`` never sees megatron.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

_MP_RANK = re.compile(r"mp_rank_(\d+)")


def saved_tensor_parallel_size(ckpt: Path) -> int:
    """TP size of a DeepSpeed checkpoint directory, from its per-TP-rank file names."""
    ranks = {int(m.group(1)) for f in Path(ckpt).iterdir() if (m := _MP_RANK.search(f.name))}
    return max(ranks) + 1 if ranks else 1


def tp_rank_view(ckpt: Path, tp_rank: int, into: Path, single_rank_metadata: bool = False) -> Path:
    """A checkpoint directory under ``into`` whose ``mp_rank_00`` files are ``ckpt``'s ``tp_rank``'s
    (symlinks); the other ranks' files are left out, every other file is linked as is.
    ``single_rank_metadata``: the model-states files are copies that say TP=1 (``ds_to_universal``
    checks the file count against the TP degree they record)."""
    view = into / f"tp{tp_rank}" / ckpt.name
    view.mkdir(parents=True)
    for f in ckpt.iterdir():
        m = _MP_RANK.search(f.name)
        if m is None:
            (view / f.name).symlink_to(f.resolve())
        elif int(m.group(1)) == tp_rank:
            target = view / _MP_RANK.sub("mp_rank_00", f.name)
            if single_rank_metadata and f.name.endswith("model_states.pt"):
                _write_single_rank_states(f, target)
            else:
                target.symlink_to(f.resolve())
    return view


def _write_single_rank_states(src: Path, dst: Path) -> None:
    import torch

    states = torch.load(src, map_location="cpu", weights_only=False)  # this run's own DeepSpeed file
    states["mp_world_size"] = 1
    if isinstance(states.get("module"), dict):  # megatron's _extra_state entries (None) crash ds_to_universal
        states["module"] = {k: v for k, v in states["module"].items() if not k.endswith("_extra_state")}
    dims = states.get("checkpoint_parallel_dimensions")
    if isinstance(dims, dict):
        states["checkpoint_parallel_dimensions"] = {**dims, "tp_degree": 1}
    torch.save(states, dst)


def merge_tp_state(shards: list[dict[str, Any]], model_tp1: nn.Module, strict: bool = True) -> dict[str, Any]:
    """One TP=1 state dict from every TP rank's full (DP-consolidated) state dict, in TP rank order.
    ``model_tp1``: the model built at TP=1 (it says where the text stacks and DiT heads are).
    ``strict=False``: a text stack absent from ``shards`` is skipped (optimizer states of a frozen one)."""
    from lavla.model.flow_head import DiT
    from lavla.trainer.tensor_parallel.dit import consolidate_dit_state
    from lavla.trainer.tensor_parallel.parallelize import _is_hf_text_stack
    from lavla.trainer.tensor_parallel.qwen3 import megatron_to_hf

    out: dict[str, Any] = {}
    claimed: set[str] = set()
    for name, stack in model_tp1.named_modules():
        if not _is_hf_text_stack(stack):
            continue
        prefix = f"{name}.decoder."
        decoder = [{k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix) and not k.endswith("_extra_state")}
                   for s in shards]
        if not decoder[0]:
            if not strict:
                continue
            raise KeyError(f"the TP checkpoint has no megatron decoder at {prefix!r}")
        out.update({f"{name}.{k}": v for k, v in megatron_to_hf(decoder, stack.config).items()})
        claimed.update(k for k in shards[0] if k.startswith(prefix))
    for name, module in model_tp1.named_modules():
        if not isinstance(module, DiT):
            continue
        prefix = f"{name}."
        parts = [{k: v for k, v in s.items() if k.startswith(prefix)} for s in shards]
        out.update(consolidate_dit_state(parts))
        claimed.update(parts[0])
    for key, value in shards[0].items():
        if key not in claimed and not key.endswith("_extra_state"):
            out[key] = value
    return out


def consolidate_tp_checkpoint(ckpt: Path, model_tp1: nn.Module,
                              consolidate_one: Callable[[Path], dict[str, Any]]) -> dict[str, Tensor]:
    """The TP=1 state dict of the TP-sharded checkpoint ``ckpt``. ``consolidate_one``: the TP=1
    consolidation of one checkpoint directory (``trainer.export.consolidate_state_dict``)."""
    ckpt = Path(ckpt)
    tp = saved_tensor_parallel_size(ckpt)
    with tempfile.TemporaryDirectory(prefix="tp_views_") as tmp:
        shards = [consolidate_one(tp_rank_view(ckpt, r, Path(tmp))) for r in range(tp)]
    return merge_tp_state(shards, model_tp1)


def shard_tp_state(full: dict[str, Any], model_tp: nn.Module, tp_rank: int, tp_size: int) -> dict[str, Any]:
    """TP rank ``tp_rank``'s state (the TP model's names and local shards) from a TP=1 state dict:
    the inverse of :func:`merge_tp_state`. ``model_tp``: the parallelized model (it says where the
    megatron text stacks and DiT heads are). A text stack absent from ``full`` is skipped (optimizer
    states of a frozen one)."""
    from lavla.model.flow_head import DiT
    from lavla.trainer.tensor_parallel.dit import shard_dit_state
    from lavla.trainer.tensor_parallel.qwen3 import MegatronQwen3TextModel, hf_to_megatron

    out: dict[str, Any] = {}
    claimed: set[str] = set()
    for name, stack in model_tp.named_modules():
        if not isinstance(stack, MegatronQwen3TextModel):
            continue
        prefix = f"{name}."
        decoder = {k[len(prefix):]: v for k, v in full.items()
                   if k.startswith(prefix) and not k.startswith(f"{prefix}embed_tokens.")}
        if not decoder:
            continue
        out.update({f"{prefix}decoder.{k}": v for k, v in hf_to_megatron(decoder, stack.config, tp_rank, tp_size).items()})
        claimed.update(prefix + k for k in decoder)
    for name, module in model_tp.named_modules():
        if not isinstance(module, DiT):
            continue
        part = {k: v for k, v in full.items() if k.startswith(f"{name}.")}
        out.update(shard_dit_state(part, tp_rank, tp_size))
        claimed.update(part)
    out.update({k: v for k, v in full.items() if k not in claimed})
    return out
