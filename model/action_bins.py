"""Per-dimension quantile bins of normalized actions: LAPA stage 3's action tokens.

Fitting follows ``pd.qcut(x, num_bins, duplicates="drop")`` per action dimension: edges are the
linearly interpolated quantiles at ``linspace(0, 1, num_bins + 1)`` of the valid samples, repeated
edges dropped, bins right-closed ``(e_j, e_{j+1}]`` with the lowest value in bin 0. One refinement:
a dimension whose samples take at most ``num_bins`` distinct values (a binary gripper, a constant
or padded dimension, a tiny sample) gets one bin per value, edges at the midpoints between them.
qcut can put both states of a binary gripper into a single bin [0, 1] (whenever no quantile falls
strictly between them); here it always gets 2 bins (1 if the gripper never moved).

Decoding maps a bin to its centre: the midpoint of the range of fitted samples inside it (for
continuous data, the midpoint of the bin's edges to within sampling; for a discrete dimension, the
value itself; for a bin no sample fell into, the midpoint of its edges). So on the fitted data
``|decode(encode(x)) - x| <= half that bin's width``.

Storage: fp32 buffers (in the state dict) ``edges [A, num_bins + 1]`` (dimension d uses
``edges[d, :num_valid[d] + 1]``, the rest +inf), ``num_valid [A]`` and ``centers [A, num_bins]``
(padded with the last valid centre). The bins file (``to_json``/``from_json``) holds
``{"num_bins", "action_dim", "edges": per-dim lists, "centers": per-dim lists}``; a file without
``centers`` (e.g. edges converted from LAPA's CSV) decodes to edge midpoints.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor


def _dim_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
    """fp32 edges (strictly increasing, or [c, c] for a single value) of one dimension's valid samples."""
    if values.size == 0:  # never valid (a padded dimension): one bin at 0
        return np.zeros(2, dtype=np.float32)
    uniq = np.unique(values.astype(np.float64))
    if uniq.size == 1:
        return np.full(2, uniq[0], dtype=np.float32)
    if uniq.size <= num_bins:
        edges = np.concatenate([uniq[:1], (uniq[:-1] + uniq[1:]) / 2.0, uniq[-1:]])
    else:
        edges = np.quantile(values.astype(np.float64), np.linspace(0.0, 1.0, num_bins + 1))
    # Dedupe after the fp32 cast too: two edges rounding to one float would make an empty bin.
    return np.unique(edges.astype(np.float32))


def _bin_ids(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Right-closed bins of one dimension (the same rule as ``QuantileActionBins.encode``)."""
    return np.minimum(np.searchsorted(edges[1:], x, side="left"), len(edges) - 2)


def _dim_centers(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    nb = len(edges) - 1
    centers = ((edges[:-1].astype(np.float64) + edges[1:]) / 2.0)
    if values.size:
        ids = _bin_ids(values, edges)
        lo = np.full(nb, np.inf)
        hi = np.full(nb, -np.inf)
        np.minimum.at(lo, ids, values)
        np.maximum.at(hi, ids, values)
        seen = np.isfinite(lo)
        centers[seen] = (lo[seen] + hi[seen]) / 2.0
    return centers.astype(np.float32)


class QuantileActionBins(nn.Module):
    """encode(actions [..., A]) -> bin ids [..., A] int64; decode(ids) -> bin centres [..., A] fp32."""

    edges: Tensor
    num_valid: Tensor
    centers: Tensor

    def __init__(self, action_dim: int, num_bins: int = 256) -> None:
        """Empty bins of the right shape (one bin [0, 0] per dim), to load a state dict into; use
        :meth:`fit` or :meth:`from_json` for real ones."""
        super().__init__()
        if action_dim < 1 or num_bins < 1:
            raise ValueError(f"action bins need action_dim >= 1 and num_bins >= 1, got {action_dim}, {num_bins}")
        self.action_dim, self.num_bins = action_dim, num_bins
        edges = torch.full((action_dim, num_bins + 1), float("inf"))
        edges[:, :2] = 0.0
        self.register_buffer("edges", edges, persistent=True)
        self.register_buffer("num_valid", torch.ones(action_dim, dtype=torch.long), persistent=True)
        self.register_buffer("centers", torch.zeros(action_dim, num_bins), persistent=True)

    # -- construction -------------------------------------------------------------------------------

    def _set(self, edges: list[np.ndarray], centers: list[np.ndarray]) -> "QuantileActionBins":
        for d, (e, c) in enumerate(zip(edges, centers)):
            nb = len(e) - 1
            if not 1 <= nb <= self.num_bins:
                raise ValueError(f"action bins: dim {d} has {nb} bins, expected 1..{self.num_bins}")
            if len(c) != nb:
                raise ValueError(f"action bins: dim {d} has {nb} bins but {len(c)} centers")
            if np.any(np.diff(e) < 0) or not np.all(np.isfinite(e)):
                raise ValueError(f"action bins: dim {d} edges must be finite and non-decreasing")
            self.edges[d].fill_(float("inf"))
            self.edges[d, : nb + 1] = torch.as_tensor(e, dtype=torch.float32)
            self.centers[d] = float(c[-1])
            self.centers[d, :nb] = torch.as_tensor(c, dtype=torch.float32)
            self.num_valid[d] = nb
        return self

    @classmethod
    def fit(cls, samples: np.ndarray, num_bins: int = 256) -> "QuantileActionBins":
        """Bins of ``samples`` [M, A] (normalized actions; NaN marks padded dims / invalid steps)."""
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"action bins are fitted on [M, A] samples, got shape {x.shape}")
        if np.isinf(x).any():
            raise ValueError("action bins: samples hold +-inf (mark invalid entries with NaN)")
        edges, centers = [], []
        for d in range(x.shape[1]):
            v = x[:, d][~np.isnan(x[:, d])]
            e = _dim_edges(v, num_bins)
            edges.append(e)
            centers.append(_dim_centers(v, e))
        return cls(x.shape[1], num_bins)._set(edges, centers)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "QuantileActionBins":
        """Bins from a ``to_json`` dict (``centers`` optional: edge midpoints without it)."""
        num_bins, action_dim, edges = int(data["num_bins"]), int(data["action_dim"]), data["edges"]
        if len(edges) != action_dim:
            raise ValueError(f"action bins file: {len(edges)} edge lists for action_dim {action_dim}")
        e = [np.asarray(x, dtype=np.float32) for x in edges]
        if any(len(x) < 2 for x in e):
            raise ValueError("action bins file: every dimension needs at least 2 edges")
        c = data.get("centers")
        if c is None:
            c = [(x[:-1].astype(np.float64) + x[1:]) / 2.0 for x in e]
        elif len(c) != action_dim:
            raise ValueError(f"action bins file: {len(c)} center lists for action_dim {action_dim}")
        return cls(action_dim, num_bins)._set(e, [np.asarray(x, dtype=np.float32) for x in c])

    def to_json(self) -> dict[str, Any]:
        """``{"num_bins", "action_dim", "edges", "centers"}``; per-dim lists of the valid entries only."""
        nv = self.num_valid.tolist()
        edges, centers = self.edges.float().cpu(), self.centers.float().cpu()
        return {
            "num_bins": self.num_bins,
            "action_dim": self.action_dim,
            "edges": [edges[d, : n + 1].tolist() for d, n in enumerate(nv)],
            "centers": [centers[d, :n].tolist() for d, n in enumerate(nv)],
        }

    # -- use ----------------------------------------------------------------------------------------

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "QuantileActionBins":
        # Follow device moves but never dtype casts: an engine casting the model to bf16 would round
        # the edges (8 mantissa bits) and merge neighbouring quantile bins.
        device = fn(torch.zeros((), device=self.edges.device)).device
        for name in ("edges", "num_valid", "centers"):
            self._buffers[name] = self._buffers[name].to(device)  # type: ignore[union-attr]
        return self

    def encode(self, actions: Tensor) -> Tensor:
        """Bin ids [..., A] int64 of normalized actions [..., A]; values outside the fitted range go to
        the end bins (ids always within each dim's ``num_valid``), NaN to the last bin."""
        a = self.action_dim
        if actions.shape[-1] != a:
            raise ValueError(f"action bins expect last dim {a}, got {tuple(actions.shape)}")
        shape = actions.shape
        flat = actions.detach().to(self.edges.device, torch.float32).reshape(-1, a).T.contiguous()
        ids = torch.searchsorted(self.edges[:, 1:].contiguous(), flat, side="left")  # count of upper edges < x
        ids = torch.minimum(ids, (self.num_valid - 1)[:, None])
        return ids.T.reshape(shape).to(actions.device)

    def decode(self, ids: Tensor) -> Tensor:
        """Bin centres [..., A] fp32 of ids [..., A] (clamped into each dim's valid range)."""
        a = self.action_dim
        if ids.shape[-1] != a:
            raise ValueError(f"action bins expect last dim {a}, got {tuple(ids.shape)}")
        shape = ids.shape
        flat = ids.to(self.centers.device).long().reshape(-1, a).T
        flat = torch.minimum(flat.clamp_min(0), (self.num_valid - 1)[:, None])
        return torch.gather(self.centers, 1, flat).T.reshape(shape).to(ids.device)

    def bin_widths(self) -> Tensor:
        """[A, num_bins] fp32 width of every bin (0 for the padded ones)."""
        e = self.edges
        w = e[:, 1:] - e[:, :-1]
        real = torch.arange(self.num_bins, device=e.device)[None] < self.num_valid[:, None]
        return torch.where(real, w, torch.zeros_like(w))

    def extra_repr(self) -> str:
        return f"action_dim={self.action_dim}, num_bins={self.num_bins}, used={self.num_valid.tolist()}"
