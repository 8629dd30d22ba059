"""Dataset registry: how each dataset's raw RLDS keys become the standard episode.

A :class:`DatasetSpec` is declarative (plain strings, tuples and numbers) so it hashes into the
source fingerprint and the statistics cache key: changing a key or convention invalidates both.
The synthetic world is defined here; the Open X-Embodiment and LIBERO facts live in
:mod:`data_service.datasets.oxe`.
"""

from __future__ import annotations

import difflib

from lavla.data_service.datasets.dataset_spec import EEF_POS_ABSOLUTE_MASK, EEF_R6_ABSOLUTE_MASK, DatasetSpec, lam_stride_for
from lavla.data_service.datasets.oxe import EMBODIMENTS, OXE_MIXTURES, OXE_SPECS

__all__ = ["DatasetSpec", "EEF_POS_ABSOLUTE_MASK", "EEF_R6_ABSOLUTE_MASK", "EMBODIMENTS", "MIXTURES",
           "VIDEO_SPECS", "get_spec", "lam_stride_for", "register", "registered_names"]

SYNTHETIC_WORLD = DatasetSpec(
    name="synthetic_world",
    image_primary_key="steps/observation/image",
    image_wrist_key="steps/observation/wrist_image",
    proprio_keys=("steps/observation/state",),
    proprio_layout="pos_euler",
    action_keys=("steps/action",),
    action_layout="eef_pos",
    gripper_convention="open_1",
    control_hz=10.0,
    lam_stride=3,
    embodiment_id=0,
    version="1.0.0",
)


def _video_spec(name: str, fps: float, *, embodiment: str = "human", lam_stride: int | None = None) -> DatasetSpec:
    """Action-less human video (``data_service.video.source``): ``control_hz`` is the nominal frame rate
    and ``lam_stride`` H at that rate; clips at other rates keep the same H in seconds."""
    return DatasetSpec(name=name, image_primary_key=None, action_keys=(), action_absolute_mask=(),
                       proprio_layout="none", control_hz=fps,
                       lam_stride=lam_stride_for(fps) if lam_stride is None else lam_stride,
                       embodiment_id=EMBODIMENTS[embodiment], is_video=True, language_key=None)


VIDEO_SPECS = [
    _video_spec("ssv2", 12.0),  # Something-Something v2: .webm at 12 fps; H = 7 frames (0.58 s)
    _video_spec("ego4d", 30.0),  # Ego4D canonical clips are 30 fps; H = 18 frames (0.6 s)
    # The synthetic world filmed with a hand instead of the gripper, at its 10 Hz with its H = 3.
    _video_spec("synthetic_human_video", SYNTHETIC_WORLD.control_hz, lam_stride=SYNTHETIC_WORLD.lam_stride),
]
"""Human-video datasets (``is_video``): read by ``data_service.video.source.VideoSource``."""

_REGISTRY: dict[str, DatasetSpec] = {SYNTHETIC_WORLD.name: SYNTHETIC_WORLD, **{s.name: s for s in OXE_SPECS},
                                     **{s.name: s for s in VIDEO_SPECS}}


def register(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Adds a dataset (e.g. a user's own RLDS conversion) to the registry."""
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise ValueError(f"dataset {spec.name!r} is already registered with different settings")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> DatasetSpec:
    """The registered spec of ``name``; a clear error listing close names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"unknown dataset {name!r} (not in lavla.data_service.datasets.registry).{hint}") from None


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


MIXTURES: dict[str, list[tuple[str, float]]] = {
    "synthetic": [("synthetic_world", 1.0)],
    "synthetic_with_human_video": [("synthetic_world", 1.0), ("synthetic_human_video", 1.0)],
    **OXE_MIXTURES,
}
"""Named mixtures: (dataset name, weight); share = weight x num_transitions, normalized."""
