"""Vector quantizers of latent actions, in fp32, with usage tracking and dead-code restart.

Three update rules share one face (:class:`Quantizer`):

* :class:`VectorQuantizer` -- straight-through estimator, codebook learned by gradient.
  Loss = ||sg(z) - q||^2 + beta * ||z - sg(q)||^2: beta weighs the *commitment* term (VQ-VAE),
  not Moto's legacy placement on the codebook term.
* :class:`EMAVectorQuantizer` -- codebook is the exponential moving average of the vectors
  assigned to each code (Laplace-smoothed cluster sizes); loss = beta * commitment only.
* :class:`NSVQuantizer` -- LAPA's noise substitution: q~ = z + (||z - q|| / ||e||) * e,
  e ~ N(0, I) in training (hard q in eval). No loss: the codebook learns through the
  reconstruction gradient flowing through ||z - q||.

Options common to all: a low-dimensional lookup (``codebook_dim``: Linear in, quantize, Linear
out, as in ViT-VQGAN) and a cosine codebook (``cosine``: z and codes l2-normalized).

Distributed use without distributed code: ``reduce_fn`` (default identity) is applied once per
forward to one flat tensor of per-code statistics (counts, squared errors, sums of the assigned
inputs). The trainer sets it to an all-reduce(sum), so usage, perplexity, the EMA
codebook and every dead-code decision are identical on every rank. It is called on every forward,
so every rank must run the quantizer every step (they do: nothing skips modules based on data).

Dead-code restart is driven by the trainer: when ``restart_due()`` (same answer on all ranks: it
depends only on reduced counts and step counters) it calls ``restart_dead_codes()``. Restarts
never write into a parameter: DeepSpeed's optimizer keeps its own (fp32, partitioned) master copy
of every parameter and overwrites the model's copy at the next step, so an edited codebook row
silently reverts (verified under ZeRO-3). Gradient-trained codebooks (ST, NSVQ) are therefore
used as ``codebook + restart_offset``, where the offset is a buffer (never partitioned, never
touched by the optimizer) and gradients still train the parameter; the EMA codebook is itself a
buffer. Buffers are not broadcast, so the new codes must be identical on every rank:
``restart_from="codes"`` splits heavily used clusters using only reduced statistics and a
generator seeded by the restart counter. ``"batch"`` (jump to this rank's latest encoder outputs) is
single-process only and refuses to run once the quantizer has seen statistics from several ranks.
Under ZeRO-3 the trainer calls the restart inside ``GatheredParameters`` so the codebook can be
read.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lavla.model.codebook_lookup import nearest_code
from lavla.model.config import QuantizerConfig

RESTART_SOURCES = ("batch", "codes")


def _identity(x: Tensor) -> Tensor:
    return x


class QuantizerOutput(NamedTuple):
    """Result of :meth:`Quantizer.forward` (a NamedTuple: ZeRO-3 hooks its tensors for backward)."""

    quantized: Tensor
    """Quantized vectors, same shape and dtype as the input (ST: forward = code, grad -> z)."""
    ids: Tensor
    """Code index per vector, input shape without the last dim."""
    loss: Tensor
    """Quantizer loss (0-dim, fp32): ST codebook + beta * commitment; EMA beta * commitment; NSVQ 0."""
    metrics: dict[str, Tensor]
    """Detached 0-dim metrics: perplexity, active codes (this step, across ranks), quantization error."""


class Fp32Linear(nn.Linear):
    """A Linear that computes in fp32 whatever its parameters' dtype (DeepSpeed bf16 casts them)."""

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.float() if self.bias is not None else None
        return F.linear(x.float(), self.weight.float(), bias)


class Quantizer(nn.Module):
    """Shared machinery: projection, lookup, usage statistics, metrics and dead-code restart.

    Subclasses provide the codebook (:meth:`codes`), the quantization rule (:meth:`_quantize`) and
    how restarted codes are written (:meth:`_write_codes`).
    """

    codebook: Tensor

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        codebook_dim: int = 0,
        cosine: bool = False,
        restart_window: int = 100,
        restart_schedule: Sequence[tuple[int, int]] = (),
        dead_threshold: float = 1.0,
        restart_noise: float = 0.01,
        restart_from: str = "codes",
    ) -> None:
        super().__init__()
        if restart_from not in RESTART_SOURCES:
            raise ValueError(f"restart_from must be one of {RESTART_SOURCES}, got {restart_from!r}")
        self.num_codes, self.dim = num_codes, dim
        self.code_dim = codebook_dim if codebook_dim > 0 else dim
        self.cosine = cosine
        self.restart_window, self.restart_schedule = restart_window, [tuple(s) for s in restart_schedule]
        self.dead_threshold, self.restart_noise, self.restart_from = dead_threshold, restart_noise, restart_from
        projected = self.code_dim != dim
        self.proj_in = Fp32Linear(dim, self.code_dim) if projected else None
        self.proj_out = Fp32Linear(self.code_dim, dim) if projected else None
        k = num_codes
        # Counts are fp64 totals (fp32 stops counting exactly at 2^24 assignments).
        self.register_buffer("usage_total", torch.zeros(k, dtype=torch.float64), persistent=True)
        self.register_buffer("usage_window", torch.zeros(k), persistent=True)
        self.register_buffer("sq_err_window", torch.zeros(k), persistent=True)
        self.register_buffer("sum_window", torch.zeros(k, self.code_dim), persistent=True)
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long), persistent=True)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long), persistent=True)
        self.register_buffer("restart_count", torch.zeros((), dtype=torch.long), persistent=True)
        # Latest code-space inputs of this rank: restart candidates for restart_from="batch". Not checkpointed.
        self.register_buffer("recent_z", torch.zeros(0, self.code_dim), persistent=False)
        self._multi_rank = False
        self.reduce_fn: Callable[[Tensor], Tensor] = _identity
        """Set by the trainer to an all-reduce(sum) over data-parallel ranks."""
        self.lookup_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]] = nearest_code
        """Nearest-code lookup ``(z, codebook) -> (ids, quantized, sq_err)``; Triton on CUDA, reference elsewhere."""

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> "Quantizer":
        """``.to()`` / ``.bfloat16()`` move the statistics but keep their precision: an EMA step of
        ``0.01 * x`` vanishes in bf16's 8-bit mantissa, and counts stop being exact. (DeepSpeed's
        bf16 cast already leaves buffers alone; a user's ``model.bfloat16()`` does not.)"""
        before = {name: b for name, b in self._buffers.items() if b is not None and b.is_floating_point()}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:  # undo the cast from the unrounded values
                self._buffers[name] = old.to(device=new.device)
        return self

    # -- subclass hooks ---------------------------------------------------------------------------

    def raw_codes(self) -> Tensor:
        """The fp32 ``[K, code_dim]`` codebook before normalization."""
        raise NotImplementedError

    def codes(self) -> Tensor:
        """The fp32 ``[K, code_dim]`` codebook as used for lookup (l2-normalized when cosine)."""
        c = self.raw_codes()
        return F.normalize(c, dim=-1) if self.cosine else c

    def _quantize(self, h: Tensor, codes: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Code-space input ``h`` [N,Dc] + chosen ``ids`` -> (output [N,Dc], loss, extra metrics)."""
        raise NotImplementedError

    def _local_stats(self, h: Tensor, ids: Tensor, sq_err: Tensor) -> Tensor:
        """Flat per-code statistics of this rank, summed over ranks by ``reduce_fn``:
        [counts (K), squared errors (K), sums of the assigned inputs (K * code_dim)]."""
        k = self.num_codes
        counts = torch.bincount(ids, minlength=k).float()
        err = torch.zeros(k, device=h.device).index_add_(0, ids, sq_err.float())
        sums = torch.zeros(k, self.code_dim, device=h.device).index_add_(0, ids, h.float())
        return torch.cat([counts, err, sums.flatten()])

    def _update(self, stats: Tensor, h: Tensor) -> None:
        """Training-time update from the reduced statistics (EMA overrides to move its codebook)."""

    def _write_codes(self, dead: Tensor, new: Tensor, donors: Tensor) -> None:
        """Store restarted codes ``new`` [n,Dc] at ``dead`` (bool [K]); ``donors`` are the code ids
        they were split from (restart_from="codes") or -1."""
        raise NotImplementedError

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, z: Tensor) -> QuantizerOutput:
        shape = z.shape
        if shape[-1] != self.dim:
            raise ValueError(f"quantizer expects last dim {self.dim}, got {tuple(shape)}")
        # fp32 whatever the surrounding autocast: distances and the commitment loss are precision-sensitive.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().reshape(-1, self.dim)
            h = self.proj_in(flat) if self.proj_in is not None else flat
            if self.cosine:
                h = F.normalize(h, dim=-1)
            codes = self.codes()
            ids, _, sq_err = self.lookup_fn(h.detach(), codes.detach())
            q, loss, extra = self._quantize(h, codes, ids)
            out = self.proj_out(q) if self.proj_out is not None else q
            stats = self.reduce_fn(self._local_stats(h.detach(), ids, sq_err))
            counts = stats[: self.num_codes]
            if float(counts.sum()) != ids.numel():
                self._multi_rank = True  # reduce_fn summed over several ranks
            if self.training:
                with torch.no_grad():
                    self.usage_total += counts.double()
                    self.usage_window += counts
                    self.sq_err_window += stats[self.num_codes : 2 * self.num_codes]
                    self.sum_window += stats[2 * self.num_codes :].view(self.num_codes, self.code_dim)
                    self.window_steps += 1
                    self.train_steps += 1
                    self.recent_z = h.detach().clone()
                    self._update(stats, h.detach())
            metrics = self._batch_metrics(counts)
            metrics["quant_error"] = (sq_err.sum() / max(sq_err.numel() * self.code_dim, 1)).detach()
            metrics.update(extra)
        return QuantizerOutput(out.reshape(shape).to(z.dtype), ids.reshape(shape[:-1]), loss, metrics)

    @staticmethod
    def _batch_metrics(counts: Tensor) -> dict[str, Tensor]:
        p = counts / counts.sum().clamp_min(1.0)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return {"perplexity": entropy.exp().detach(), "active_codes": (counts > 0).sum().float().detach()}

    # -- usage and restart ------------------------------------------------------------------------

    def usage_histogram(self, window: bool = False) -> Tensor:
        """Code counts since construction (``window=False``) or since the last restart, fp32 ``[K]``."""
        return (self.usage_window if window else self.usage_total).float().clone()

    def current_window(self) -> int:
        """Restart interval now: the first ``restart_schedule`` entry with ``until > steps``, else ``restart_window``."""
        steps = int(self.train_steps)
        for until, every in self.restart_schedule:
            if steps < until:
                return int(every)
        return self.restart_window

    def restart_due(self) -> bool:
        """True once the current window of training steps has passed since the last restart."""
        window = self.current_window()
        return window > 0 and int(self.window_steps) >= window

    def dead_codes(self) -> Tensor:
        """Bool ``[K]``: codes used fewer than ``dead_threshold`` times in the current window."""
        return self.usage_window < self.dead_threshold

    def _default_generator(self) -> torch.Generator:
        # Seeded by the restart counter: every rank draws the same numbers (restart_from="codes").
        return torch.Generator().manual_seed(1_000_003 * int(self.restart_count) + 17)

    @torch.no_grad()
    def restart_dead_codes(self, candidates: Tensor | None = None, generator: torch.Generator | None = None) -> int:
        """Replace dead codes, reset the window; returns the number replaced.

        ``restart_from="codes"``: donors are live codes drawn in proportion to their window usage;
        each dead code restarts at its donor's cluster mean (summed over ranks) plus jitter scaled by
        the cluster's spread, so heavily used clusters get split (rank-identical).
        ``"batch"``: jittered encoder outputs (``candidates``, default this process's latest batch).
        Under ZeRO-3 the trainer calls this inside GatheredParameters (module docstring).
        """
        dead = self.dead_codes()
        n_dead = int(dead.sum())
        gen = generator if generator is not None else self._default_generator()
        gdev = gen.device
        new = donors = None
        if n_dead and self.restart_from == "batch":
            if self._multi_rank and candidates is None:
                raise RuntimeError("restart_from='batch' restarts dead codes from this rank's encoder outputs, which "
                                   "differ between ranks; use restart_from='codes' for data-parallel training")
            cand = self.recent_z if candidates is None else candidates.detach().float().reshape(-1, self.code_dim)
            if cand.shape[0]:
                pick = torch.randint(0, cand.shape[0], (n_dead,), generator=gen, device=gdev).to(cand.device)
                noise = torch.randn(n_dead, self.code_dim, generator=gen, device=gdev).to(cand.device)
                new = cand[pick] + self.restart_noise * cand.std().clamp_min(1e-6) * noise
                donors = torch.full((n_dead,), -1, dtype=torch.long, device=cand.device)
        elif n_dead and self.restart_from == "codes":
            usage = self.usage_window.float().cpu()
            live = usage * ~dead.cpu()  # donors are live codes only
            if live.sum() > 0:
                donors = torch.multinomial(live / live.sum(), n_dead, replacement=True, generator=gen)
                # Split each donor's cluster around its mean (not its code, which may sit far from its
                # data), jittered by the cluster's per-dim spread: E||h-c||^2 - ||mean-c||^2.
                n = usage.clamp_min(1.0)[:, None]
                mean = self.sum_window.float().cpu() / n
                gap = (mean - self.raw_codes().detach().float().cpu()).pow(2).sum(1)
                spread = ((self.sq_err_window.float().cpu() / n[:, 0] - gap).clamp_min(0) / self.code_dim).sqrt()
                noise = torch.randn(n_dead, self.code_dim, generator=gen, device=gdev).cpu()
                new = mean[donors] + self.restart_noise * spread[donors, None].clamp_min(1e-3) * noise
                dev = self.usage_window.device
                new, donors = new.to(dev), donors.to(dev)
        if new is not None and donors is not None:
            if self.cosine:
                new = F.normalize(new, dim=-1)
            self._write_codes(dead, new, donors)
        else:
            n_dead = 0
        self.usage_window.zero_()
        self.sq_err_window.zero_()
        self.sum_window.zero_()
        self.window_steps.zero_()
        self.restart_count += 1
        return n_dead


class ParameterCodebookQuantizer(Quantizer):
    """A codebook learned by gradient: used as ``codebook + restart_offset`` (see the module docstring)."""

    def _init_codebook(self, init: Tensor) -> None:
        self.codebook = nn.Parameter(init)
        self.register_buffer("restart_offset", torch.zeros_like(init), persistent=True)

    def raw_codes(self) -> Tensor:
        return self.codebook.float() + self.restart_offset

    def _write_codes(self, dead: Tensor, new: Tensor, donors: Tensor) -> None:
        # The jump goes into the buffer; the parameter keeps its optimizer-owned value and keeps learning.
        d = dead.to(self.restart_offset.device)
        self.restart_offset[d] = new.to(self.restart_offset) - self.codebook.detach().float()[d].to(self.restart_offset)


class VectorQuantizer(ParameterCodebookQuantizer):
    """Straight-through VQ; ``num_codes`` x ``code_dim`` codebook parameter (Moto/taming init uniform +-1/K)."""

    def __init__(self, num_codes: int, dim: int, *, beta: float = 0.25, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(num_codes, dim, **kw)
        self.beta = beta
        self._init_codebook(torch.empty(num_codes, self.code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))

    def _quantize(self, h: Tensor, codes: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        # Re-gather so the codebook gradient never depends on the lookup backend
        # (a fused kernel returns non-differentiable codes).
        q = F.embedding(ids, codes)
        codebook_loss = F.mse_loss(q, h.detach())
        commit_loss = F.mse_loss(h, q.detach())
        q_st = h + (q - h).detach()
        extra = {"codebook_loss": codebook_loss.detach(), "commit_loss": commit_loss.detach()}
        return q_st, codebook_loss + self.beta * commit_loss, extra


class EMAVectorQuantizer(Quantizer):
    """Straight-through VQ whose codebook (an fp32 buffer) is the EMA of its assigned vectors.

    cluster_size <- d * cluster_size + (1 - d) * n_k;  embed_avg <- d * embed_avg + (1 - d) * sum_k z
    codebook = embed_avg / smoothed(cluster_size), smoothed(n) = (n + eps) / (N + K eps) * N
    (Laplace smoothing keeps a rarely used code from dividing by ~0). n_k and sum_k z are summed
    over ranks by ``reduce_fn`` before the update, so every rank holds the same codebook.
    """

    def __init__(self, num_codes: int, dim: int, *, beta: float = 0.25, decay: float = 0.99, eps: float = 1e-5, **kw) -> None:  # type: ignore[no-untyped-def]
        if kw.get("restart_from", "codes") != "codes":
            raise ValueError("the EMA codebook is a buffer that no engine broadcasts: restarts must use "
                             "restart_from='codes' (rank-identical), not encoder outputs of one rank")
        super().__init__(num_codes, dim, **kw)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.beta, self.decay, self.eps = beta, decay, eps
        init = torch.randn(num_codes, self.code_dim)
        if self.cosine:
            init = F.normalize(init, dim=-1)
        self.register_buffer("codebook", init.clone(), persistent=True)
        self.register_buffer("cluster_size", torch.ones(num_codes), persistent=True)
        self.register_buffer("embed_avg", init.clone(), persistent=True)

    def raw_codes(self) -> Tensor:
        return self.codebook

    def _quantize(self, h: Tensor, codes: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        q = F.embedding(ids, codes)
        commit_loss = F.mse_loss(h, q)  # codes is a buffer: no gradient to the codebook
        return h + (q - h).detach(), self.beta * commit_loss, {"commit_loss": commit_loss.detach()}

    def _update(self, stats: Tensor, h: Tensor) -> None:
        k, d = self.num_codes, self.decay
        counts, sums = stats[:k].float(), stats[2 * k :].reshape(k, self.code_dim).float()
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embed_avg.mul_(d).add_(sums, alpha=1 - d)
        self._refresh_codebook()

    def _refresh_codebook(self) -> None:
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        cb = self.embed_avg / smoothed[:, None]
        self.codebook.copy_(F.normalize(cb, dim=-1) if self.cosine else cb)

    def _write_codes(self, dead: Tensor, new: Tensor, donors: Tensor) -> None:
        # Split each donor's EMA mass evenly between itself and its copies: revived codes start
        # with a share of a real cluster, not with their own stale statistics (which are dropped).
        dead_idx = dead.nonzero().flatten()
        picks = torch.bincount(donors, minlength=self.num_codes).float()
        share = self.cluster_size / (picks + 1.0)
        donor_rows = picks > 0
        self.embed_avg[donor_rows] = self.codebook[donor_rows] * share[donor_rows, None]
        self.cluster_size[donor_rows] = share[donor_rows]
        self.cluster_size[dead_idx] = share[donors]
        self.embed_avg[dead_idx] = new * share[donors, None]
        self._refresh_codebook()


class NSVQuantizer(ParameterCodebookQuantizer):
    """LAPA's noise-substitution VQ: q~ = z + (||z - q|| / ||e||) * e in training, q in eval.

    The codebook (normal init, as LAPA) gets gradients only through ||z - q||, i.e. from the
    reconstruction loss; there is no codebook or commitment loss.
    """

    def __init__(self, num_codes: int, dim: int, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(num_codes, dim, **kw)
        init = torch.randn(num_codes, self.code_dim)
        self._init_codebook(F.normalize(init, dim=-1) if self.cosine else init)

    def _quantize(self, h: Tensor, codes: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        q = F.embedding(ids, codes)
        loss = h.new_zeros(())
        if not self.training:
            return q, loss, {}
        eps = torch.randn_like(h)
        scale = (h - q).norm(dim=-1, keepdim=True) / eps.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return h + scale * eps, loss, {}


def build_quantizer(cfg: QuantizerConfig, dim: int) -> Quantizer:
    """The quantizer ``cfg.kind`` for ``dim``-d inputs."""
    common = dict(
        codebook_dim=cfg.codebook_dim,
        cosine=cfg.cosine,
        restart_window=cfg.restart_window,
        restart_schedule=cfg.restart_schedule,
        dead_threshold=cfg.dead_threshold,
        restart_noise=cfg.restart_noise,
        restart_from=cfg.restart_from,
    )
    if cfg.kind == "st":
        return VectorQuantizer(cfg.num_codes, dim, beta=cfg.beta, **common)
    if cfg.kind == "ema":
        return EMAVectorQuantizer(cfg.num_codes, dim, beta=cfg.beta, decay=cfg.ema_decay, eps=cfg.ema_eps, **common)
    if cfg.kind == "nsvq":
        return NSVQuantizer(cfg.num_codes, dim, **common)
    raise ValueError(f"unknown quantizer kind {cfg.kind!r}; expected st, ema or nsvq")


def find_quantizers(module: nn.Module) -> Iterator[Quantizer]:
    """Every quantizer inside ``module`` (the trainer sets ``reduce_fn`` and drives restarts)."""
    return (m for m in module.modules() if isinstance(m, Quantizer))
