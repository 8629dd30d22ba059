"""One training sample (schema of ``data_service.schema``, no batch dim) from one episode step.

Window semantics (pinned by tests):

* ``image_future`` is frame ``min(t + H, T - 1)``; with ``future_out_of_range: drop`` the plan
  only ever asks for ``t + H <= T - 1`` (see :func:`valid_timesteps`).
* The action chunk is ``a_t .. a_{t+N-1}``; steps past the episode end have ``action_valid``
  False, relative dims 0 and absolute dims (gripper) repeating the last real action, so a model
  that ignores the mask still sees "hold the gripper, stop moving".
* Action/proprio dims are zero-padded to ``max_action_dim`` / ``max_proprio_dim`` with masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lavla.data_service.config import DataConfig
from lavla.data_service.decode import DecodedFrameCache, decode_image
from lavla.data_service.errors import DataError
from lavla.data_service.datasets.standardize import StandardEpisode
from lavla.data_service.stats import Normalizer

if TYPE_CHECKING:
    from lavla.data_service.sources import EpisodeSource

Sample = dict[str, "np.ndarray | str"]


def lam_stride(source_stride: int, data_cfg: DataConfig) -> int:
    """H: the config override when set (> 0), else the dataset's registry stride."""
    return data_cfg.lam_stride if data_cfg.lam_stride > 0 else source_stride


def valid_timesteps(length: int, H: int, data_cfg: DataConfig) -> np.ndarray:
    """int64 step indices a sample may start at: all of them (``clamp``) or those with t+H <= T-1 (``drop``)."""
    if data_cfg.future_out_of_range == "drop":
        return np.arange(max(0, length - H), dtype=np.int64)
    return np.arange(max(0, length), dtype=np.int64)


def _pad(vec: np.ndarray, size: int, what: str, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    d = vec.shape[-1]
    if d > size:
        raise ValueError(f"{dataset}: {what} has {d} dims but data.max_{what}_dim is {size}; raise it in the config")
    out = np.zeros(vec.shape[:-1] + (size,), np.float32)
    out[..., :d] = vec
    mask = np.zeros(size, bool)
    mask[:d] = True
    return out, mask


def action_chunk(action: np.ndarray, t: int, horizon: int, absolute_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, A]`` chunk from ``t`` and its ``[N]`` validity; past the end: relative 0, absolute = last."""
    T, A = action.shape
    idx = np.arange(t, t + horizon)
    valid = idx < T
    chunk = action[np.minimum(idx, T - 1)].copy()
    chunk[~valid] = np.where(absolute_mask, action[T - 1], 0.0)
    return chunk.astype(np.float32), valid


def make_sample(episode: StandardEpisode, t: int, source: EpisodeSource, normalizer: Normalizer,
                data_cfg: DataConfig, *, frame_cache: DecodedFrameCache | None = None) -> Sample:
    """The sample at step ``t`` of ``episode``. ``sample_id``/``dataset_id`` are -1: the caller fills them.

    ``frame_cache`` reuses frames decoded for neighbouring windows (see ``DecodedFrameCache``).
    """
    spec = source.spec
    T = episode.length
    if not 0 <= t < T:
        raise IndexError(f"{episode.dataset} episode {episode.episode}: t={t} outside [0, {T})")
    H = lam_stride(spec.lam_stride, data_cfg)
    size = data_cfg.image_size

    def image(frames: list[bytes], i: int, bgr: bool, key: str | None) -> np.ndarray:
        def decode() -> np.ndarray:
            return decode_image(frames[i], size, bgr=bgr, file=episode.file, episode=episode.episode, field=key)

        if frame_cache is None:
            return decode()
        return frame_cache.get((episode.dataset, episode.file, episode.episode, key, i, size, bgr), decode)

    primary = image(episode.image_primary, t, spec.bgr, spec.image_primary_key)
    future = image(episode.image_primary, min(t + H, T - 1), spec.bgr, spec.image_primary_key)
    wrist = image(episode.image_wrist, t, spec.bgr_wrist, spec.image_wrist_key) if episode.image_wrist is not None else None

    absolute = np.asarray(spec.action_absolute_mask, bool)
    # Normalize the real steps, then pad: padded relative dims are 0 in model space.
    norm_action = normalizer.normalize(episode.action, "action")
    chunk, valid = action_chunk(norm_action, t, data_cfg.action_horizon, absolute)
    if not np.isfinite(chunk).all():  # statistics themselves can be broken (e.g. a stale cache)
        raise DataError("normalized action is not finite", file=episode.file, episode=episode.episode, field="action")
    return assemble_sample(primary=primary, future=future, wrist=wrist,
                           proprio=normalizer.normalize(episode.proprio[t], "proprio"), action=chunk, action_valid=valid,
                           language=episode.language, embodiment_id=spec.embodiment_id, data_cfg=data_cfg,
                           dataset=episode.dataset)


def assemble_sample(*, primary: np.ndarray, future: np.ndarray, wrist: np.ndarray | None, proprio: np.ndarray,
                    action: np.ndarray, action_valid: np.ndarray, language: str, embodiment_id: int,
                    data_cfg: DataConfig, dataset: str) -> Sample:
    """The one layout of a model input, for training (``make_sample``) and for acting
    (``data_service.sampling.observation.observation_batch``): decoded uint8 [3,S,S] frames, a zero wrist frame
    (``has_wrist`` False) where there is none, and the normalized proprio [p] and action chunk [N,a]
    padded to ``data.max_proprio_dim`` / ``max_action_dim`` with their masks.
    ``sample_id``/``dataset_id`` are -1: the caller fills them."""
    size = data_cfg.image_size
    has_wrist = wrist is not None
    if wrist is None:
        wrist = np.zeros((3, size, size), np.uint8)
    padded_action, action_mask = _pad(np.asarray(action, np.float32), data_cfg.max_action_dim, "action", dataset)
    padded_proprio, proprio_mask = _pad(np.asarray(proprio, np.float32), data_cfg.max_proprio_dim, "proprio", dataset)
    return {
        "sample_id": np.asarray(-1, np.int64),
        "image_primary": primary,
        "image_future": future,
        "image_wrist": wrist,
        "has_wrist": np.asarray(has_wrist),
        "proprio": padded_proprio,
        "proprio_dim_mask": proprio_mask,
        "action": padded_action,
        "action_valid": np.asarray(action_valid, bool),
        "action_dim_mask": action_mask,
        "has_action": np.asarray(True),
        "embodiment_id": np.asarray(embodiment_id, np.int64),
        "dataset_id": np.asarray(-1, np.int64),
        "language": language,
    }
