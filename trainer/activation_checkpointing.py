"""Activation checkpointing chosen by config, applied to an already-built model.

Which modules: the ones a model lists in a ``checkpointable_blocks`` attribute (a sequence of
modules, or a method returning one), otherwise every instance of a class named in
``trainer.checkpoint_block_classes``. Nested matches are checkpointed once, at the outermost.

How: torch's non-reentrant ``checkpoint`` around the module's whole ``__call__``, not its
``forward``. ZeRO-3 gathers a module's parameters in ``__call__`` hooks; wrapping only
``forward`` would recompute in backward on already-released (empty) parameters. The instance's
class is swapped for a same-named subclass that only overrides ``__call__``, so parameter names,
``state_dict`` keys and checkpoints are identical with checkpointing on or off.

ZeRO-3 + non-reentrant recompute + frozen parameters used to fail ("saved [N] vs recomputed
[0]", DeepSpeed PR #8130/#8148); the pinned DeepSpeed has the fix and tests/trainer cover it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_CHECKPOINTED: dict[type, type] = {}
_recompute_flops: list[int] | None = None  # set while trainer.flops measures a step


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


def _call_module(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # The recompute happens inside backward; its FLOPs are counted so that MFU can use model
    # FLOPs (without recomputation) rather than executed FLOPs.
    if _recompute_flops is not None and _in_backward():
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        try:
            with counter:
                return nn.Module.__call__(module, *args, **kwargs)
        finally:  # also when torch stops the recompute early
            _recompute_flops[0] += counter.get_total_flops()
    return nn.Module.__call__(module, *args, **kwargs)


def _checkpointed_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    if self.training and torch.is_grad_enabled():
        return checkpoint(_call_module, self, *args, use_reentrant=False, **kwargs)
    return nn.Module.__call__(self, *args, **kwargs)


def _checkpointed_class(cls: type) -> type:
    sub = _CHECKPOINTED.get(cls)
    if sub is None:
        sub = type(cls.__name__, (cls,), {"__call__": _checkpointed_call, "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__, "_activation_checkpointed": True})
        _CHECKPOINTED[cls] = sub
    return sub


def is_checkpointed(module: nn.Module) -> bool:
    return bool(getattr(type(module), "_activation_checkpointed", False))


def select_blocks(model: nn.Module, class_names: Sequence[str]) -> list[nn.Module]:
    """The modules to checkpoint: the model's own list, else instances of the named classes."""
    listed = getattr(model, "checkpointable_blocks", None)
    if callable(listed):
        listed = listed()
    if listed is not None:
        blocks = list(listed)
        bad = [type(b).__name__ for b in blocks if not isinstance(b, nn.Module)]
        if bad:
            raise TypeError(f"{type(model).__name__}.checkpointable_blocks must hold nn.Modules, got {bad}")
    else:
        names = set(class_names)
        blocks = [m for m in model.modules() if type(m).__name__ in names]
    # Keep the outermost of nested matches: checkpointing inside a checkpointed block only recomputes twice.
    inner = {id(sub) for b in blocks for sub in b.modules() if sub is not b}
    return [b for b in blocks if id(b) not in inner]


def apply_activation_checkpointing(model: nn.Module, class_names: Sequence[str]) -> int:
    """Checkpoint the selected blocks of ``model`` in place; returns how many. Raises if none match."""
    blocks = select_blocks(model, class_names)
    if not blocks:
        raise ValueError(
            f"trainer.activation_checkpointing is on but {type(model).__name__} has no "
            f"'checkpointable_blocks' and no module of class {sorted(class_names)} "
            "(set trainer.checkpoint_block_classes)"
        )
    for b in blocks:
        if not is_checkpointed(b):
            b.__class__ = _checkpointed_class(type(b))
    return len(blocks)


@contextlib.contextmanager
def count_recompute_flops() -> Iterator[list[int]]:
    """Within the block, FLOPs re-executed by checkpoint recomputation accumulate in the yielded cell."""
    global _recompute_flops
    previous, _recompute_flops = _recompute_flops, [0]
    try:
        yield _recompute_flops
    finally:
        _recompute_flops = previous
