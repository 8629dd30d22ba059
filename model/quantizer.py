"""Straight-through vector quantizer in fp32 with usage tracking and dead-code restart.

Loss = ||sg(z) - q||^2 + beta * ||z - sg(q)||^2: beta weighs the *commitment* term (VQ-VAE),
not Moto's legacy placement on the codebook term.

Distributed use without distributed code: ``reduce_fn`` (default identity) is applied to the
per-step code counts; the trainer sets it to an all-reduce(sum) so usage, perplexity and the
dead-code decision are identical on every rank. It is called on every forward, so every rank must
run the quantizer every step (they do: nothing in the models skips modules based on data).

Dead-code restart under ZeRO-3: the codebook is a partitioned parameter, so the trainer calls
``restart_dead_codes()`` inside ``deepspeed.zero.GatheredParameters(q.codebook, modifier_rank=0)``
when ``restart_due()`` is true (same answer on all ranks: it depends only on reduced counts and
the step counter). Rank 0's new codes are broadcast on exit; the other ranks' choices are dropped.
The optimizer's moments for restarted rows are stale; that is tolerated (Adam re-adapts quickly).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from model.codebook_lookup import nearest_code


def _identity(x: Tensor) -> Tensor:
    return x


class QuantizerOutput(NamedTuple):
    """Result of :meth:`VectorQuantizer.forward` (a NamedTuple: ZeRO-3 hooks its tensors for backward)."""

    quantized: Tensor
    """Straight-through quantized vectors, same shape as the input (forward = code, grad -> z)."""
    ids: Tensor
    """Code index per vector, input shape without the last dim."""
    loss: Tensor
    """Codebook + beta * commitment loss (0-dim, fp32)."""
    metrics: dict[str, Tensor]
    """Detached 0-dim metrics: perplexity, active codes (this step, across ranks via reduce_fn)."""


class VectorQuantizer(nn.Module):
    """``num_codes`` x ``code_dim`` codebook, nearest-L2 lookup, straight-through gradients."""

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        beta: float = 0.25,
        restart_window: int = 100,
        dead_threshold: float = 1.0,
        restart_noise: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_codes, self.code_dim, self.beta = num_codes, code_dim, beta
        self.restart_window, self.dead_threshold, self.restart_noise = restart_window, dead_threshold, restart_noise
        # Moto/taming init: uniform(+-1/K).
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        self.register_buffer("usage_total", torch.zeros(num_codes), persistent=True)
        self.register_buffer("usage_window", torch.zeros(num_codes), persistent=True)
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long), persistent=True)
        # Latest encoder outputs (this rank): restart candidates. Not checkpointed.
        self.register_buffer("recent_z", torch.zeros(0, code_dim), persistent=False)
        self.reduce_fn: Callable[[Tensor], Tensor] = _identity
        """Set by the trainer to an all-reduce(sum) over data-parallel ranks."""
        self.lookup_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]] = nearest_code
        """Nearest-code implementation (a Triton kernel plugs in here with the same signature)."""

    def forward(self, z: Tensor) -> QuantizerOutput:
        shape = z.shape
        # fp32 whatever the surrounding autocast: distances and the commitment loss are precision-sensitive.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().reshape(-1, self.code_dim)
            codebook = self.codebook.float()
            ids = self.lookup_fn(flat, codebook)[0]
            # Re-gather so the codebook gradient never depends on the lookup backend
            # (a fused kernel may return non-differentiable codes).
            q = F.embedding(ids, codebook)
            codebook_loss = F.mse_loss(q, flat.detach())
            commit_loss = F.mse_loss(flat, q.detach())
            loss = codebook_loss + self.beta * commit_loss
            q_st = flat + (q - flat).detach()
            counts = self.reduce_fn(torch.bincount(ids, minlength=self.num_codes).float())
            if self.training:
                with torch.no_grad():
                    self.usage_total += counts
                    self.usage_window += counts
                    self.window_steps += 1
                    self.recent_z = flat.detach().clone()
            metrics = self._batch_metrics(counts)
            metrics["vq/codebook_loss"] = codebook_loss.detach()
            metrics["vq/commit_loss"] = commit_loss.detach()
        return QuantizerOutput(q_st.reshape(shape).to(z.dtype), ids.reshape(shape[:-1]), loss, metrics)

    @staticmethod
    def _batch_metrics(counts: Tensor) -> dict[str, Tensor]:
        p = counts / counts.sum().clamp_min(1.0)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return {"perplexity": entropy.exp().detach(), "active_codes": (counts > 0).sum().float().detach()}

    def usage_histogram(self, window: bool = False) -> Tensor:
        """Code counts since construction (``window=False``) or since the last restart."""
        return (self.usage_window if window else self.usage_total).clone()

    def restart_due(self) -> bool:
        """True once ``restart_window`` training steps have passed since the last restart."""
        return self.restart_window > 0 and int(self.window_steps) >= self.restart_window

    def dead_codes(self) -> Tensor:
        """Bool ``[K]``: codes used fewer than ``dead_threshold`` times in the current window."""
        return self.usage_window < self.dead_threshold

    @torch.no_grad()
    def restart_dead_codes(self, candidates: Tensor | None = None, generator: torch.Generator | None = None) -> int:
        """Replace dead codes with jittered encoder outputs; reset the window. Returns #replaced.

        ``candidates`` defaults to the latest batch of encoder outputs seen in training. Under
        ZeRO-3 call this inside GatheredParameters(codebook, modifier_rank=0) (module docstring).
        """
        dead = self.dead_codes()
        n_dead = int(dead.sum())
        cand = self.recent_z if candidates is None else candidates.detach().float().reshape(-1, self.code_dim)
        if n_dead and cand.shape[0]:
            dev = generator.device if generator is not None else "cpu"
            pick = torch.randint(0, cand.shape[0], (n_dead,), generator=generator, device=dev).to(cand.device)
            noise = torch.randn(n_dead, self.code_dim, generator=generator, device=dev).to(cand.device)
            scale = self.restart_noise * cand.std().clamp_min(1e-6)
            self.codebook.data[dead.to(self.codebook.device)] = (cand[pick] + scale * noise).to(self.codebook.dtype)
        else:
            n_dead = 0
        self.usage_window.zero_()
        self.window_steps.zero_()
        return n_dead


def find_quantizers(module: nn.Module) -> Iterator[VectorQuantizer]:
    """Every quantizer inside ``module`` (the trainer sets ``reduce_fn`` and drives restarts)."""
    return (m for m in module.modules() if isinstance(m, VectorQuantizer))
