"""``VideoReader`` over PyAV: what LeRobot's ``decode_video_frames_torchvision`` uses."""

from __future__ import annotations

import av
import torch


class VideoReader:
    def __init__(self, path: str, stream: str = "video") -> None:
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self._frames = None

    def seek(self, ts: float, keyframes_only: bool = True) -> VideoReader:
        # as torchvision's pyav backend: to the keyframe at or before ts, then decode forward
        offset = int(ts / self.stream.time_base)
        self.container.seek(offset, stream=self.stream, backward=True, any_frame=not keyframes_only)
        self._frames = self.container.decode(self.stream)
        return self

    def __iter__(self):
        if self._frames is None:
            self._frames = self.container.decode(self.stream)
        for frame in self._frames:
            rgb = frame.to_ndarray(format="rgb24")
            yield {"data": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), "pts": float(frame.pts * self.stream.time_base)}
