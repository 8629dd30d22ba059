"""Turn a model built at TP=1 into its tensor-parallel form, in place (torchtitan's way: the model
code in ``model/`` never sees a process group).

* every Hugging Face Qwen3 / Qwen3-VL text stack becomes a :class:`MegatronQwen3TextModel`
  (megatron-core layers, TP-sharded, optionally sequence parallel and recomputed);
* every DiT action head gets megatron's column/row-parallel linears (``dit.parallelize_dit``);
* everything else (vision tower, LAM, embeddings, LM head, small heads) stays replicated across the
  TP group and is partitioned by ZeRO across the data-parallel group.

Every TP rank must build the same TP=1 model first (same seed); each keeps its shard.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from torch import nn

from lavla.trainer.tensor_parallel.qwen3 import SUPPORTED_TYPES, MegatronQwen3TextModel, TextStackOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelizeReport:
    """What :func:`parallelize` changed."""

    text_stacks: list[str]
    """Module paths of the text stacks now run by megatron-core."""
    dit_modules: int
    """Attention / MLP modules of DiT heads now TP-sharded."""
    partial_grad_params: int
    """Replicated parameters whose gradients are summed over TP (q/k-norms, SP norms)."""


def _is_hf_text_stack(module: nn.Module) -> bool:
    cfg = getattr(module, "config", None)
    return (getattr(cfg, "model_type", None) in SUPPORTED_TYPES and hasattr(module, "layers")
            and hasattr(module, "embed_tokens") and not isinstance(module, MegatronQwen3TextModel))


def _whole(module: nn.Module) -> contextlib.AbstractContextManager:
    """Read access to ``module``'s full weights: a read-only gather (over the data-parallel group)
    when ``trainer.zero_init`` partitioned them at construction. The TP modules made from them are
    built whole; DeepSpeed partitions them at ``initialize``."""
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned)


def _check_no_lora(model: nn.Module) -> None:
    if any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError("LoRA adapters on a tensor-parallel text stack are not supported: under TP the "
                         "HF linears LoRA wraps are replaced by megatron's; use backbone.hf.tuning=full or "
                         "frozen, or parallel.tensor_parallel_size=1")


def parallelize(model: nn.Module, opts: TextStackOptions) -> ParallelizeReport:
    """Convert ``model`` in place for megatron's current TP group (``mpu.initialize`` first)."""
    from megatron.core import parallel_state as ps

    from lavla.model.flow_head import DiT
    from lavla.trainer.tensor_parallel.dit import parallelize_dit
    from lavla.trainer.tensor_parallel.grad_sync import register_tp_grad_sums

    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    if tp_size != opts.tensor_parallel_size:
        raise RuntimeError(f"megatron's TP group has {tp_size} ranks, the config asks for {opts.tensor_parallel_size}")
    _check_no_lora(model)
    stacks = [(name, m) for name, m in model.named_modules() if _is_hf_text_stack(m)]
    for name, stack in stacks:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        trainable = any(p.requires_grad for p in stack.parameters())
        with _whole(stack):
            tp_stack = MegatronQwen3TextModel(stack, opts)
        tp_stack.requires_grad_(trainable)
        tp_stack.train(stack.training)
        setattr(parent, attr, tp_stack)
    dit_modules = 0
    for dit in [m for m in model.modules() if isinstance(m, DiT)]:
        with _whole(dit):
            dit_modules += parallelize_dit(dit, tp_rank, tp_size)
    hooked = register_tp_grad_sums(model, ps.get_tensor_model_parallel_group())
    report = ParallelizeReport([n for n, _ in stacks], dit_modules, hooked)
    if not stacks and not dit_modules:
        raise ValueError(f"parallel.tensor_parallel_size={tp_size}, but {type(model).__name__} has no part that "
                         "runs tensor parallel (a Qwen3/Qwen3-VL text stack or a DiT head): use TP=1")
    log.info("tensor parallel %d (rank %d): text stacks %s, %d DiT modules sharded, %d replicated "
             "parameters with TP-summed gradients", tp_size, tp_rank, report.text_stacks or "none", dit_modules, hooked)
    return report
