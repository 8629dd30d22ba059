"""Every primary-camera frame of one episode, decoded once, with what a LAM window needs: the library
side of the LAM tools (annotation, probes), which pair each step t with its future frame t + H."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class EpisodeFrames:
    """One episode's primary-camera frames and what the LAM window needs."""

    dataset: str
    """Registry name of the dataset."""
    episode: int
    """Episode index within the split."""
    frames: torch.Tensor
    """uint8 [T, 3, S, S]."""
    stride: int
    """H: the future frame of step t is min(t + H, T - 1)."""
    actions: np.ndarray
    """float32 [T, A] un-normalized actions (A = 0 for action-less video)."""

    def pair_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(t, min(t+H, T-1)) for every step t."""
        t = np.arange(self.frames.shape[0])
        return t, np.minimum(t + self.stride, len(t) - 1)


def read_episode_frames(source: Any, index: int, data_cfg: Any) -> EpisodeFrames:
    """Decode every primary frame of episode ``index`` once, at ``data_cfg.image_size``."""
    from lavla.data_service.decode import decode_image
    from lavla.data_service.sampling.windowing import lam_stride

    ep = source.read_episode(index)
    size = data_cfg.image_size
    reader = getattr(ep, "frames", None)
    if reader is not None and hasattr(reader, "read"):  # human video: frames come from the clip reader
        frames = np.ascontiguousarray(reader.read(np.arange(ep.length)).transpose(0, 3, 1, 2))
        stride = int(getattr(ep, "stride", lam_stride(source.spec.lam_stride, data_cfg)))
    else:
        spec = source.spec
        frames = np.stack([decode_image(b, size, bgr=spec.bgr, file=ep.file, episode=ep.episode, field=spec.image_primary_key)
                           for b in ep.image_primary])
        stride = lam_stride(spec.lam_stride, data_cfg)
    return EpisodeFrames(source.name, index, torch.from_numpy(frames), stride, np.asarray(ep.action, np.float32))
