"""Skip optimizer steps whose loss or gradient is NaN/inf; stop after too many in a row.

How a step is skipped without touching DeepSpeed's bookkeeping: DeepSpeed's ZeRO optimizers
already discard an update whose global gradient norm is non-finite (they zero the gradients, do
not step the optimizer or the lr scheduler, count ``skipped_steps`` and keep the micro-step
counters consistent). So:

* each micro step's loss is checked locally (a device flag, no sync);
* before the last backward of the step, one collective tells every rank whether *any* rank saw a
  non-finite loss;
* if so, every rank multiplies that last loss by NaN before backward: NaN times anything is NaN,
  so the gradients, and hence DeepSpeed's global norm, are non-finite on every rank and DeepSpeed
  skips the update. (A finite loss with non-finite gradients is skipped by DeepSpeed on its own.)
* after ``engine.step()`` the trainer asks the engine whether the update was applied; a step we
  meant to skip that was applied anyway is an error, never silent.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive non-finite steps; names the step and the offending loss terms."""


def nonfinite_terms(metrics: Mapping[str, Any]) -> list[str]:
    """Names of the metric values (loss terms) that are NaN/inf."""
    bad = []
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() and not bool(torch.isfinite(v.detach()).all()):
                bad.append(k)
        elif isinstance(v, float) and not math.isfinite(v):
            bad.append(k)
    return sorted(bad)


class NonFiniteGuard:
    """Per-step bookkeeping of non-finite losses, shared decisions and the consecutive-skip limit."""

    def __init__(self, max_consecutive: int, skipped_total: int = 0) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_total = skipped_total
        self.skipped_window = 0
        self._bad: torch.Tensor | None = None

    def begin_step(self) -> None:
        self._bad = None

    def observe(self, loss: torch.Tensor) -> None:
        """Record this micro step's loss (no host sync)."""
        flag = ~torch.isfinite(loss.detach()).all()
        self._bad = flag if self._bad is None else (self._bad | flag)

    def any_rank_nonfinite(self) -> bool:
        """Collective: True on every rank if any rank saw a non-finite loss this step."""
        assert self._bad is not None, "observe() the step's losses first"
        t = self._bad.to(torch.float32).reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    @staticmethod
    def poison(loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate on a step every rank agreed to skip (see the module docstring)."""
        return loss * float("nan")

    def end_step(self, step: int, applied: bool, loss_nonfinite: bool, step_metrics: list[Mapping[str, Any]]) -> bool:
        """Account for the finished step; returns True if it was skipped. Raises NonFiniteLossError
        (on every rank alike) once ``max_consecutive`` steps in a row were skipped."""
        if applied:
            if loss_nonfinite:
                raise RuntimeError(
                    f"step {step}: a loss was non-finite but DeepSpeed applied the update; the skip relies "
                    "on DeepSpeed's overflow check (ZeRO stage 1-3, bf16.check_grad_overflow for bf16 at stage 1-2)"
                )
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped_total += 1
        self.skipped_window += 1
        what = self._describe(step_metrics) if loss_nonfinite else "non-finite gradient (finite loss)"
        log.warning("step %d skipped: %s; %d consecutive (limit %d), %d skipped in total",
                    step, what, self.consecutive, self.max_consecutive, self.skipped_total)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"stopping at step {step}: {self.consecutive} consecutive steps skipped "
                f"(trainer.max_nonfinite_steps={self.max_consecutive}); last one: {what}"
            )
        return True

    def pop_window(self) -> dict[str, float]:
        out = {"nonfinite/skipped_steps": float(self.skipped_window),
               "nonfinite/skipped_total": float(self.skipped_total)}
        self.skipped_window = 0
        return out

    @classmethod
    def _describe(cls, step_metrics: list[Mapping[str, Any]]) -> str:
        terms = cls._gather_terms(step_metrics)
        losses = [t for t in terms if t.startswith("loss")]
        others = [t for t in terms if not t.startswith("loss")]
        text = f"non-finite loss terms: {', '.join(losses) or 'loss'}"
        return text + (f" (also non-finite: {', '.join(others)})" if others else "")

    @staticmethod
    def _gather_terms(step_metrics: list[Mapping[str, Any]]) -> list[str]:
        """Union over micro steps and ranks of non-finite term names, as 'name (rank r)'."""
        local = sorted({t for m in step_metrics for t in nonfinite_terms(m)})
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return local
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, local)
        ranks: dict[str, list[int]] = {}
        for r, names in enumerate(everyone):
            for name in names:
                ranks.setdefault(name, []).append(r)
        return [f"{name} (rank {','.join(map(str, rs))})" for name, rs in sorted(ranks.items())]
