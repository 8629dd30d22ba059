"""An environment observation as the training pipeline delivers a sample: the inference side of the
one observation -> model-input path (``windowing.assemble_sample`` lays out both).

Frames go through the dataset's own codec and ``decode.decode_image`` (the resize training saw),
proprio through the run's normalizer; ``policy`` is a loaded export (``model.policy_io.LoadedPolicy``:
``data_cfg``, ``meta``, ``normalize_proprio``, ``action_dim``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lavla.data_service.sampling.loader import collate
from lavla.data_service.sampling.windowing import assemble_sample


def _as_trained(image: np.ndarray, encoding: str | None, size: int) -> np.ndarray:
    """uint8 [3,h,w] frame -> uint8 [3,size,size] as the data pipeline delivers it: encoded the way
    the dataset stores that camera (``png``/``jpeg``; None: no codec) and decoded + resized by
    ``data_service.decode.decode_image``."""
    from lavla.data_service.decode import decode_image
    from lavla.data_service.formats.rlds_writer import encode_image

    hwc = np.ascontiguousarray(np.asarray(image, np.uint8).transpose(1, 2, 0))
    if encoding is None:
        encoding = "png"  # lossless: only the resize applies
    return decode_image(encode_image(hwc, encoding), size)


def dataset_ids(policy: Any, dataset_name: str) -> tuple[int, int]:
    """``(dataset_id, embodiment_id)`` the training pipeline gave samples of ``dataset_name``:
    its index in ``data.datasets`` and its registry entry's embodiment."""
    names = [entry.name for entry in policy.data_cfg.datasets]
    if dataset_name not in names:
        raise KeyError(f"the policy was not trained on {dataset_name!r} (its mixture: {', '.join(names)})")
    facts = policy.meta.get("normalization", {}).get("datasets", {}).get(dataset_name)
    if facts is not None and "embodiment_id" in facts:
        embodiment = int(facts["embodiment_id"])
    else:
        from lavla.data_service.datasets.inline_spec import spec_for_entry

        embodiment = int(spec_for_entry(policy.data_cfg.datasets[names.index(dataset_name)]).embodiment_id)
    return names.index(dataset_name), embodiment


def observation_batch(obs: dict[str, Any], policy: Any, dataset_name: str, *,
                      image_encodings: dict[str, str] | None = None) -> dict[str, Any]:
    """One env observation -> a batch of one sample in the ``data_service.schema`` layout (torch
    tensors, ``language`` a list), as ``data_service.sampling.windowing.make_sample`` + the reader build a
    training sample at the first step of an episode window (``has_action`` True, every chunk step
    valid, zero action targets: the policy predicts them). ``image_future`` repeats the current
    frame (the future is unknown; inference does not read it)."""
    cfg = policy.data_cfg
    size, N = cfg.image_size, cfg.action_horizon
    enc = dict(image_encodings or {})
    primary = _as_trained(obs["image_primary"], enc.get("image_primary"), size)
    wrist = _as_trained(obs["image_wrist"], enc.get("image_wrist"), size) if obs.get("image_wrist") is not None else None
    raw_proprio = np.asarray(obs["proprio"], np.float32)
    proprio = policy.normalize_proprio(raw_proprio, dataset_name)[..., : raw_proprio.shape[-1]]
    dataset_id, embodiment_id = dataset_ids(policy, dataset_name)
    sample = assemble_sample(primary=primary, future=primary.copy(), wrist=wrist, proprio=proprio,
                             action=np.zeros((N, policy.action_dim(dataset_name)), np.float32),
                             action_valid=np.ones(N, bool), language=str(obs.get("language", "")),
                             embodiment_id=embodiment_id, data_cfg=cfg, dataset=dataset_name)
    sample["sample_id"], sample["dataset_id"] = np.asarray(0, np.int64), np.asarray(dataset_id, np.int64)
    return collate([sample])
