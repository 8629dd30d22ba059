"""Linear probes: do LAM latents encode the true action? (Trainer-independent, tensors in, numbers out.)

Labels come from the ground-truth actions over the LAM window: the motion between x_t and
x_{t+H} is the sum of actions a_t .. a_{t+H-1} (clamped at the episode end). Two probes:

* :func:`fit_logistic_probe` -- multinomial logistic regression (classification accuracy against
  the majority-class chance level), e.g. from one-hot token ids to the direction class;
* :func:`fit_ridge_probe` -- ridge regression (R^2 per target dim), e.g. from the continuous
  latent to the summed translation.

Fit on one set of episodes, score on another (the test set never shares an episode with the fit).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

AXIS_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")


def window_action_sums(actions: np.ndarray, horizon: int) -> np.ndarray:
    """``[T, A]`` actions -> ``[T, A]``: sum of a_t .. a_{min(t+H, T-1)-1}, the actions between frame t
    and the (clamped) frame t+H; zero at the last step."""
    t_len = actions.shape[0]
    csum = np.concatenate([np.zeros((1, actions.shape[1]), np.float64), np.cumsum(actions, axis=0, dtype=np.float64)])
    t = np.arange(t_len)
    end = np.minimum(t + horizon, t_len - 1)
    return (csum[end] - csum[t]).astype(np.float32)


def direction_labels(delta: np.ndarray, dims: tuple[int, ...] = (0, 1, 2), min_norm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Dominant signed axis of the motion ``delta[:, dims]``: class ``2 i`` = +dims[i], ``2 i + 1`` = -dims[i].

    With the default (x, y, z) translation: 0 +x, 1 -x, 2 +y, 3 -y, 4 +z, 5 -z. Returns
    ``(labels int64 [N], keep bool [N])``; ``keep`` drops near-still samples
    (``||delta[:, dims]|| <= min_norm``) whose direction is noise.
    """
    sub = delta[:, list(dims)]
    axis = np.abs(sub).argmax(axis=1)
    negative = sub[np.arange(len(sub)), axis] < 0
    labels = (2 * axis + negative).astype(np.int64)
    keep = np.linalg.norm(sub, axis=1) > min_norm
    return labels, keep


def one_hot_ids(ids: Tensor, num_codes: int) -> Tensor:
    """Token ids ``[N, Q]`` -> concatenated one-hots ``[N, Q*K]`` (float)."""
    return F.one_hot(ids.long(), num_codes).flatten(1).float()


class ProbeResult(NamedTuple):
    """Scores of a classification probe."""

    accuracy: float
    """Test accuracy."""
    chance: float
    """Majority-class frequency in the test set (what a constant guess scores)."""
    uniform_chance: float
    """1 / number of classes."""
    train_accuracy: float
    """Accuracy on the fitting set."""
    num_train: int
    """Fitting samples."""
    num_test: int
    """Test samples."""


class RegressionResult(NamedTuple):
    """Scores of a regression probe."""

    r2: list[float | None]
    """Test R^2 per target dimension (1 - SSE / SST, SST about the test mean); None where the test
    targets do not vary (a constant dimension has no R^2: it would read as a perfect 1.0)."""
    mean_r2: float
    """Mean of ``r2`` over the dimensions that have one (NaN if none)."""


def _standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mu, sd = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return (train - mu) / sd, (test - mu) / sd


def fit_logistic_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                       l2: float = 1e-3, max_iter: int = 200) -> ProbeResult:
    """Multinomial logistic regression (L-BFGS, L2 ``l2``) on standardized features."""
    xtr, xte = _standardize(train_x.double(), test_x.double())
    ytr, yte = train_y.long(), test_y.long()
    w = torch.zeros(xtr.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        acc = float(((xte @ w + b).argmax(1) == yte).double().mean())
        train_acc = float(((xtr @ w + b).argmax(1) == ytr).double().mean())
    counts = torch.bincount(yte, minlength=num_classes).double()
    return ProbeResult(acc, float(counts.max() / counts.sum().clamp_min(1)), 1.0 / num_classes, train_acc,
                       int(ytr.numel()), int(yte.numel()))


def fit_ridge_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1e-2) -> RegressionResult:
    """Closed-form ridge regression on standardized features (intercept not penalized)."""
    xtr, xte = _standardize(train_x.double(), test_x.double())
    ytr, yte = train_y.double(), test_y.double()
    y_mu = ytr.mean(0, keepdim=True)
    d = xtr.shape[1]
    w = torch.linalg.solve(xtr.T @ xtr + l2 * xtr.shape[0] * torch.eye(d, dtype=torch.float64), xtr.T @ (ytr - y_mu))
    pred = xte @ w + y_mu
    sse = (yte - pred).pow(2).sum(0)
    sst = (yte - yte.mean(0, keepdim=True)).pow(2).sum(0)
    varies = sst > 1e-12 * max(1, yte.shape[0])
    r2 = [float(1.0 - e / t) if v else None for e, t, v in zip(sse.tolist(), sst.tolist(), varies.tolist())]
    scored = [r for r in r2 if r is not None]
    return RegressionResult(r2, float(np.mean(scored)) if scored else float("nan"))
