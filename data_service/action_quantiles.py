"""Normalized robot actions for fitting per-dimension quantile bins (LAPA stage 3 action tokens).

``sample_actions(data_cfg)`` draws up to ``max_samples`` transitions of the mixture's robot
datasets and returns their actions exactly as training batches hold them: standardized,
normalized with the same per-dataset statistics and mode (``data.normalization``, absolute
gripper dims untouched) and zero-padded to ``data.max_action_dim``::

    actions  float32 [M, A]   one row per sampled transition a_t
    valid    bool    [M, A]   real (True) vs padded (False) dims

A row is the action of one step t, which every training sample starting at t holds as
``action[0]`` (and samples starting before t hold at a valid chunk position), so rows are
always inside their episode and always from a dataset with actions: ``valid`` is the sample's
``action_dim_mask`` (the batch's ``action_valid & action_dim_mask & has_action`` for that step).

Which transitions:

* Only robot datasets: action-less (human video) entries are skipped without being opened.
* Split expressions are the mixture's (``DatasetEntry.split``), as for training.
* Shares follow the mixture: dataset i gets ``M * p_i`` rows (largest remainder), with
  ``p_i`` proportional to ``weight_i x transitions_i`` over the robot datasets (OpenVLA/Octo
  semantics, as the sample plan), so with equal weights every robot transition is equally likely,
  and with unequal ones the rows follow the action distribution training sees.
  ``M = min(max_samples, total robot transitions)``.
* Within a dataset the transitions are a keyed pseudo-random subset without replacement (a
  dataset whose share exceeds its size repeats all of its transitions, then a subset): the result
  is a pure function of (config, datasets, seed), identical across machines and numpy versions.
* Episodes are read whole once each (TFRecord stores an episode as one record) but images are
  never decoded. Rows come ordered by (dataset, episode, step).

Bad episodes follow ``data.on_bad_sample``: ``error`` raises the DataError (file, episode,
field); ``skip`` logs it and leaves its rows out (M shrinks).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tqdm import tqdm

from lavla.data_service.config import DataConfig
from lavla.data_service.errors import DataError
from lavla.data_service.sampling.plan import keyed_permutation

log = logging.getLogger(__name__)

_TAG_ACTIONS = 0x4A7

__all__ = ["quotas", "sample_actions"]


def quotas(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the lower index)."""
    w = np.asarray(weights, np.float64)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), np.int64)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    rest = total - int(out.sum())
    order = np.argsort(-(exact - out), kind="stable")
    out[order[:rest]] += 1
    return out


def _pick(n: int, m: int, *key: int) -> np.ndarray:
    """``m`` of ``range(n)`` without replacement while possible (all of them repeated, then a subset)."""
    perm = keyed_permutation(n, *key).astype(np.int64)
    return np.concatenate([np.tile(perm, m // n), perm[: m % n]])


def _robot_sources(data_cfg: DataConfig) -> list[tuple[int, Any]]:
    """(mixture position, opened source) of every dataset with actions."""
    from lavla.data_service.datasets.inline_spec import spec_for_entry
    from lavla.data_service.sources import open_source

    out = []
    for pos, entry in enumerate(data_cfg.datasets):
        if spec_for_entry(entry, pos).is_video:
            continue
        source = open_source(entry, data_cfg, pos)
        if int(source.spec.action_dim) == 0:
            continue
        out.append((pos, source))
    return out


def sample_actions(data_cfg: DataConfig, max_samples: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalized, padded actions ``[M, A]`` of sampled robot transitions and their ``[M, A]``
    validity (see the module doc). Deterministic given ``seed``."""
    from lavla.data_service.stats import Normalizer
    from lavla.data_service.sampling.windowing import _pad

    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    A = data_cfg.max_action_dim
    robots = _robot_sources(data_cfg)
    lengths = [np.asarray(s.episode_lengths, np.int64) for _, s in robots]
    sizes = np.array([int(n.sum()) for n in lengths], np.int64)
    weights = np.array([data_cfg.datasets[pos].weight for pos, _ in robots], np.float64)
    total = min(int(max_samples), int(sizes.sum()))
    take = quotas(total, weights * sizes)
    if not robots or total == 0:
        log.warning("sample_actions: the mixture has no robot transitions")
        return np.zeros((0, A), np.float32), np.zeros((0, A), bool)

    actions, valid = [], []
    for (pos, source), lens, n, m in zip(robots, lengths, sizes, take):
        if m == 0:
            continue
        normalizer = Normalizer(source.statistics(), data_cfg.normalization, source.spec.action_absolute_mask)
        flat = np.sort(_pick(int(n), int(m), seed, _TAG_ACTIONS, pos))
        starts = np.concatenate([[0], np.cumsum(lens)])
        episodes = np.searchsorted(starts, flat, side="right") - 1
        steps = flat - starts[episodes]
        bounds = np.flatnonzero(np.diff(episodes)) + 1
        groups = zip(np.split(episodes, bounds), np.split(steps, bounds))
        skipped = 0
        for eps, ts in tqdm(list(groups), desc=f"actions of {source.name}", unit="episode", disable=None, leave=False):
            e = int(eps[0])
            try:
                ep = source.read_episode(e)
                if ep.length != lens[e]:
                    raise DataError(f"episode has {ep.length} steps, the index says {int(lens[e])}", file=ep.file,
                                    episode=e, field="action")
                rows, mask = _pad(normalizer.normalize(ep.action[ts], "action"), A, "action", source.name)
                if not np.isfinite(rows).all():
                    raise DataError("normalized action is not finite", file=ep.file, episode=e, field="action")
            except DataError as err:
                if data_cfg.on_bad_sample != "skip":
                    raise
                skipped += len(ts)
                log.warning("sample_actions: skipping %d transitions of a bad episode: %s", len(ts), err)
                continue
            actions.append(rows)
            valid.append(np.broadcast_to(mask, rows.shape))
        log.info("sample_actions: %d transitions of %s (%d in its split%s)", int(m) - skipped, source.name, int(n),
                 f", {skipped} skipped" if skipped else "")
    if not actions:
        return np.zeros((0, A), np.float32), np.zeros((0, A), bool)
    return np.concatenate(actions).astype(np.float32), np.concatenate(valid).astype(bool)
