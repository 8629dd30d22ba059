"""The :class:`DatasetSpec` type: standardization facts of one dataset (see ``registry``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

EEF_POS_ABSOLUTE_MASK = (False,) * 6 + (True,)
"""EEF_POS actions: 6 relative dims (xyz, rpy deltas) and an absolute gripper."""
EEF_R6_ABSOLUTE_MASK = (False,) * 9 + (True,)
"""EEF_R6 actions: xyz delta, 6-D rotation and an absolute gripper."""


@dataclass(frozen=True)
class DatasetSpec:
    """Standardization facts of one dataset (keys are flat RLDS Example keys)."""

    name: str
    """Registry name (also the TFDS dataset name for RLDS datasets)."""
    image_primary_key: str | None
    """Step key of the primary (third-person) camera, e.g. ``steps/observation/image``."""
    image_wrist_key: str | None = None
    """Step key of the wrist camera; None when the dataset has none (``has_wrist`` False)."""
    proprio_keys: tuple[str, ...] = ()
    """Parts concatenated per step into proprio (syntax in ``data_service.datasets.standardize``: a key,
    ``key[a:b]``, ``zeros:N``, ``zlib:key``...); () = no proprio."""
    proprio_layout: str = "none"
    """``pos_euler`` (xyz, rpy, pad, gripper) | ``pos_quat`` (xyz, quat, gripper) | ``joint`` | ``none``."""
    action_keys: tuple[str, ...] = ("steps/action",)
    """Parts concatenated per step into the action (same syntax), before the gripper fix-up."""
    action_layout: str = "eef_pos"
    """``eef_pos`` (7: xyz delta, rpy delta, gripper) | ``eef_r6`` (10)."""
    action_absolute_mask: tuple[bool, ...] = EEF_POS_ABSOLUTE_MASK
    """Per action dim: True = absolute (left unnormalized, repeated past the episode end)."""
    gripper_convention: str = "open_1"
    """How the raw last action dim becomes absolute 1=open: ``open_1`` (as is), ``close_1``
    (1 - g), ``clip01`` (clip to [0, 1]), ``clip01_invert`` (clip, then 1 - g), ``binarize``
    (open above 0.95, closed below 0.05), ``relative`` (+1 close / -1 open commands integrated)."""
    bgr: bool = False
    """The primary camera is stored BGR (flipped to RGB on decode)."""
    bgr_wrist: bool = False
    """The wrist camera is stored BGR (flipped to RGB on decode)."""
    control_hz: float = 10.0
    """Control frequency of the dataset (steps per second)."""
    lam_stride: int = 5
    """H: frame stride of the LAM pair (x_t, x_{t+H}); chosen per dataset from ``control_hz``."""
    embodiment_id: int = 0
    """Index of the embodiment-specific head weights (same robot + action space = same id)."""
    is_video: bool = False
    """Action-less human video (no action, ``has_action`` False); False for RLDS robot data."""
    language_key: str | None = "steps/language_instruction"
    """Step key of the instruction (first non-empty step's); ``codepoints:<key>`` for code-point arrays."""
    transform: str = "default"
    """Name of the standardization function in ``data_service.datasets.standardize.TRANSFORMS``."""
    drop_first_steps: int = 0
    """Steps dropped at the start (bridge: its first action is all zeros)."""
    drop_last_steps: int = 0
    """Steps dropped at the end (bridge: relabelled actions need a next state)."""
    version: str = ""
    """Preferred TFDS version directory (informational; the entry's path decides)."""

    def __post_init__(self) -> None:
        dims = {"eef_pos": 7, "eef_r6": 10}
        if self.action_layout not in dims:
            raise ValueError(f"{self.name}: action_layout must be eef_pos or eef_r6, got {self.action_layout!r}")
        if not self.is_video and len(self.action_absolute_mask) != dims[self.action_layout]:
            raise ValueError(f"{self.name}: action_absolute_mask has {len(self.action_absolute_mask)} dims, "
                             f"{self.action_layout} has {dims[self.action_layout]}")
        if self.lam_stride < 1:
            raise ValueError(f"{self.name}: lam_stride must be >= 1")

    @property
    def action_dim(self) -> int:
        return len(self.action_absolute_mask)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def lam_stride_for(hz: float) -> int:
    """H for a control rate: ~0.6 s of motion (LAPA's stride), at least 1 frame. Frequency-aware
    strides keep the LAM's motion scale comparable across datasets (UniVLA #62)."""
    return max(1, int(round(0.6 * hz)))
