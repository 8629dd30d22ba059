"""Dataset registry: how each dataset's raw RLDS keys become the standard episode.

A :class:`DatasetSpec` is declarative (plain strings, tuples and numbers) so it hashes into the
source fingerprint and the statistics cache key: changing a key or convention invalidates both.
The synthetic world is defined here; the Open X-Embodiment and LIBERO facts live in
:mod:`data_service.oxe`.
"""

from __future__ import annotations

import difflib

from data_service.dataset_spec import EEF_POS_ABSOLUTE_MASK, EEF_R6_ABSOLUTE_MASK, DatasetSpec, lam_stride_for
from data_service.oxe import EMBODIMENTS, OXE_MIXTURES, OXE_SPECS

__all__ = ["DatasetSpec", "EEF_POS_ABSOLUTE_MASK", "EEF_R6_ABSOLUTE_MASK", "EMBODIMENTS", "MIXTURES",
           "get_spec", "lam_stride_for", "register", "registered_names"]

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

_REGISTRY: dict[str, DatasetSpec] = {SYNTHETIC_WORLD.name: SYNTHETIC_WORLD, **{s.name: s for s in OXE_SPECS}}


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
        raise KeyError(f"unknown dataset {name!r} (not in data_service.registry).{hint}") from None


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


MIXTURES: dict[str, list[tuple[str, float]]] = {
    "synthetic": [("synthetic_world", 1.0)],
    **OXE_MIXTURES,
}
"""Named mixtures: (dataset name, weight); share = weight x num_transitions, normalized."""
