"""A stand-in for torchvision in the LeRobot fixture venvs only (never on the project's path).

torchvision's PyPI wheels are built against their own torch and do not load against the CPU
torch 2.13.0 this project pins, yet LeRobot's dataset modules import it at module level. Only what
writing a dataset and LeRobot's pyav reading path touch is provided: ``transforms.ToTensor``, the
``transforms.v2`` base classes, ``set_video_backend`` and ``io.VideoReader`` (over PyAV, with
``seek`` to the keyframe before a time and frames as ``{"data": uint8 CHW, "pts": seconds}``).
"""

from . import io, transforms

__all__ = ["io", "set_video_backend", "transforms"]

__version__ = "0.0+lavla-shim"


def set_video_backend(backend: str) -> None:
    if backend != "pyav":
        raise ValueError(f"the torchvision shim decodes with pyav only, not {backend!r}")
