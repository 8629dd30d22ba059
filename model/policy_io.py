"""Load an exported policy (``python -m lavla.launcher.export_policy``) without DeepSpeed.

An export directory is self-contained::

    model.safetensors          every parameter and persistent buffer (tied tensors stored once)
    extra_state.json           (only if the recipe keeps non-tensor ``get_extra_state``) JSON values
    config.yaml                the run's full resolved config, with the backbone's export overrides
    normalization_stats.json   per-dataset action/proprio statistics the model was trained with
    export.json                format, recipe, source checkpoint, step, parameter count, sha256 of
                               the weights, library versions, tied-tensor aliases, asset paths,
                               and each dataset's normalization facts (mode, absolute dims)
    <assets>/                  whatever ``VLBackbone.export_assets`` wrote (e.g. an HF config/tokenizer)

``load_policy(dir)`` checks the weights' sha256, rebuilds the model with ``model.factory.build_model``
from ``config.yaml`` (``model`` and ``data`` sections; asset paths resolved against the export dir),
loads the weights strictly and returns a :class:`LoadedPolicy`. Nothing on this path imports
DeepSpeed or the trainer: a robot-side process needs torch, safetensors, draccus and this repo's
``model`` and ``data_service`` packages only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

EXPORT_FORMAT = "lavla-policy"
"""``export.json["format"]`` of a policy export."""
EXPORT_FORMAT_VERSION = 1
"""Bumped when the directory layout or a file's meaning changes incompatibly."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
STATS_FILE = "normalization_stats.json"
META_FILE = "export.json"
EXTRA_STATE_FILE = "extra_state.json"
ALIASES_METADATA_KEY = "lavla_aliases"
"""safetensors metadata entry: JSON ``{alias: stored name}`` of tied tensors stored once."""


class PolicyLoadError(RuntimeError):
    """An export directory that cannot be loaded: missing or altered files, a model mismatch."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            raise PolicyLoadError(f"config.yaml: cannot set 'model.{key}': 'model.{p}' is not a section")
        node = child
    node[parts[-1]] = value


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            raise PolicyLoadError(f"config.yaml has no 'model.{key}' (named in export.json asset_paths)")
        node = node[p]
    return node


def _strip_model_prefix(key: str) -> str:
    return key.removeprefix("model.")


def read_export_meta(export_dir: str | os.PathLike) -> dict[str, Any]:
    """``export.json`` of ``export_dir``, with its format checked."""
    d = Path(export_dir)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise PolicyLoadError(f"{d}: not a policy export (no {META_FILE}); create one with "
                              "python -m lavla.launcher.export_policy <run or checkpoint dir> --out DIR")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise PolicyLoadError(f"{meta_path}: not valid JSON: {e}") from e
    if meta.get("format") != EXPORT_FORMAT:
        raise PolicyLoadError(f"{meta_path}: format {meta.get('format')!r} is not {EXPORT_FORMAT!r}")
    if int(meta.get("format_version", -1)) > EXPORT_FORMAT_VERSION:
        raise PolicyLoadError(f"{meta_path}: format_version {meta.get('format_version')} is newer than this code "
                              f"reads ({EXPORT_FORMAT_VERSION}); update the repository")
    return meta


def verify_weights(export_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Raise :class:`PolicyLoadError` unless ``model.safetensors`` has the size and sha256 recorded at export."""
    d = Path(export_dir)
    meta = meta if meta is not None else read_export_meta(d)
    path = d / WEIGHTS_FILE
    if not path.is_file():
        raise PolicyLoadError(f"{path}: weights file missing")
    want = meta["weights"]
    size = path.stat().st_size
    if "size_bytes" in want and size != int(want["size_bytes"]):
        raise PolicyLoadError(f"{path}: {size} bytes but the export wrote {want['size_bytes']} "
                              "(truncated or replaced); re-export the policy")
    got = sha256_file(path)
    if got != want["sha256"]:
        raise PolicyLoadError(f"{path}: sha256 {got} does not match export.json ({want['sha256']}); "
                              "the weights were altered or corrupted after export")


def load_export_configs(export_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(model_cfg, data_cfg)`` from ``config.yaml`` with asset paths resolved against ``export_dir``."""
    import draccus
    import yaml

    from lavla.data_service.config import DataConfig
    from lavla.model.config import ModelConfig

    d = Path(export_dir).resolve()
    meta = meta if meta is not None else read_export_meta(d)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise PolicyLoadError(f"{path}: config missing")
    tree = yaml.safe_load(path.read_text()) or {}
    if not isinstance(tree, dict) or "model" not in tree or "data" not in tree:
        raise PolicyLoadError(f"{path}: needs 'model' and 'data' sections")
    model_tree = tree["model"]
    for key in meta.get("asset_paths", []):
        key = _strip_model_prefix(key)
        rel = _get_dotted(model_tree, key)
        if isinstance(rel, str) and rel and not os.path.isabs(rel):
            target = d / rel
            if not target.exists():
                raise PolicyLoadError(f"{d}: asset {rel!r} (model.{key}) is missing from the export")
            _set_dotted(model_tree, key, str(target))
    try:
        model_cfg = draccus.decode(ModelConfig, model_tree)
        data_cfg = draccus.decode(DataConfig, tree["data"])
    except Exception as e:  # draccus wraps the field's own validation error
        raise PolicyLoadError(f"{path}: cannot decode the model/data config: {e}") from e
    return model_cfg, data_cfg


def read_weights(export_dir: str | os.PathLike) -> dict[str, Any]:
    """The full state dict of the export: stored tensors, tied aliases restored, JSON extra state."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    d = Path(export_dir)
    path = d / WEIGHTS_FILE
    try:
        sd: dict[str, Any] = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            file_meta = f.metadata() or {}
    except Exception as e:
        raise PolicyLoadError(f"{path}: not a readable safetensors file: {e}") from e
    aliases = json.loads(file_meta.get(ALIASES_METADATA_KEY, "{}"))
    for alias, stored in aliases.items():
        if stored not in sd:
            raise PolicyLoadError(f"{path}: tied tensor {alias!r} points at {stored!r}, which is not stored")
        sd[alias] = sd[stored]
    extra = d / EXTRA_STATE_FILE
    if extra.is_file():
        sd.update(json.loads(extra.read_text()))
    return sd


def load_state_dict_strict(module: nn.Module, state: dict[str, Any], source: str) -> None:
    """``module.load_state_dict(state)`` with one clear error listing missing / unexpected / misshapen keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in set(own) & set(state)
                    if isinstance(own[k], Tensor) and isinstance(state[k], Tensor) and own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        def show(xs: list[str]) -> str:
            return ", ".join(xs[:12]) + (f" (+{len(xs) - 12} more)" if len(xs) > 12 else "")

        parts = [f"{len(missing)} missing: {show(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {show(unexpected)}" if unexpected else "",
                 f"{len(shapes)} with another shape: {show(shapes)}" if shapes else ""]
        raise PolicyLoadError(f"{source}: weights do not match the model built from the config; "
                              + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=True)


@dataclass
class LoadedPolicy:
    """A trained policy ready for inference: the recipe module (eval mode) and what it was trained with."""

    module: nn.Module
    """The recipe module (e.g. ``LaraPolicy``), eval mode, on ``device``."""
    model_cfg: Any
    """The recipe config (``ModelConfig`` subclass) the module was built from (asset paths absolute)."""
    data_cfg: Any
    """The run's ``DataConfig`` (image size, horizon, padding widths, normalization mode)."""
    stats: dict[str, Any]
    """``normalization_stats.json``: per dataset ``{"action": {...}, "proprio": {...}, ...}``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """``export.json``."""
    export_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # -- inference --------------------------------------------------------------------------------
    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Tensors of ``batch`` moved to ``device`` (other values untouched)."""
        return {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}

    def predict_action(self, batch: dict[str, Any], **kwargs: Any) -> Tensor:
        """Normalized action chunk ``[B,N,A]`` (padded dims 0): the module's ``predict_action``
        (``num_steps``, ``generator``... forwarded) on a batch in the ``data_service.schema`` layout."""
        with torch.no_grad():
            return self.module.predict_action(self.to_device(batch), **kwargs)

    # -- normalization ----------------------------------------------------------------------------
    @property
    def dataset_names(self) -> list[str]:
        return sorted(self.stats)

    def normalizer(self, dataset_name: str) -> Any:
        """The ``data_service.stats.Normalizer`` the data pipeline used for ``dataset_name``."""
        from lavla.data_service.stats import DatasetStatistics, Normalizer

        if dataset_name not in self.stats:
            raise KeyError(f"no normalization statistics for dataset {dataset_name!r}; "
                           f"this policy was trained on: {', '.join(self.dataset_names)}")
        stats = DatasetStatistics.from_dict(self.stats[dataset_name])
        norm_meta = self.meta.get("normalization", {})
        mode = norm_meta.get("mode", self.data_cfg.normalization)
        info = norm_meta.get("datasets", {}).get(dataset_name)
        if info is not None:
            mask = info["action_absolute_mask"]
        else:  # an export without the facts: the entry's inline spec or the registry's
            from lavla.data_service.datasets.inline_spec import spec_for_entry

            entry = next((e for e in self.data_cfg.datasets if e.name == dataset_name), None)
            if entry is None:
                from lavla.data_service.datasets.registry import get_spec

                mask = get_spec(dataset_name).action_absolute_mask
            else:
                mask = spec_for_entry(entry).action_absolute_mask
        if len(mask) != stats.action.dim:  # action-less (video) datasets have neither
            mask = [False] * stats.action.dim
        return Normalizer(stats, mode, tuple(bool(m) for m in mask))

    def action_dim(self, dataset_name: str) -> int:
        """Real action dims of ``dataset_name`` (the model's output is padded to ``data.max_action_dim``)."""
        return len(self.stats[dataset_name]["action"]["mean"]) if dataset_name in self.stats else 0

    def unnormalize_action(self, actions: Tensor | np.ndarray, dataset_name: str) -> Tensor | np.ndarray:
        """Model-space actions ``[..., A]`` (A >= the dataset's D, padded dims ignored) -> raw robot
        actions ``[..., D]`` of ``dataset_name``: the exact inverse of the pipeline's normalization
        (``Normalizer.unnormalize``: inside the clipping range for the bounds modes; absolute dims,
        such as the gripper, pass through; constant dims return their constant). Returns the input's
        kind: a float32 tensor on the input's device, or a float32 numpy array."""
        norm = self.normalizer(dataset_name)
        d = norm.stats.action.dim
        if d == 0:
            raise ValueError(f"dataset {dataset_name!r} has no actions (action-less video); nothing to unnormalize")
        is_tensor = isinstance(actions, Tensor)
        arr = actions.detach().float().cpu().numpy() if is_tensor else np.asarray(actions, np.float32)
        if arr.shape[-1] < d:
            raise ValueError(f"actions have {arr.shape[-1]} dims but {dataset_name!r} has {d}")
        raw = norm.unnormalize(arr[..., :d], "action")
        return torch.from_numpy(raw).to(actions.device) if is_tensor else raw

    def normalize_proprio(self, proprio: Tensor | np.ndarray, dataset_name: str) -> np.ndarray:
        """Raw proprio ``[..., P_d]`` of ``dataset_name`` -> normalized, zero-padded to ``data.max_proprio_dim``
        (what the ``proprio`` batch field holds), as the data pipeline does."""
        norm = self.normalizer(dataset_name)
        arr = proprio.detach().float().cpu().numpy() if isinstance(proprio, Tensor) else np.asarray(proprio, np.float32)
        y = norm.normalize(arr, "proprio")
        out = np.zeros(y.shape[:-1] + (self.data_cfg.max_proprio_dim,), np.float32)
        out[..., : y.shape[-1]] = y
        return out


def load_policy(export_dir: str | os.PathLike, device: str | torch.device = "cpu", *, verify: bool = True) -> LoadedPolicy:
    """Load a policy export (see the module docstring). ``verify`` checks the weights' sha256 first."""
    from lavla.model.factory import build_model

    d = Path(export_dir).resolve()
    meta = read_export_meta(d)
    if verify:
        verify_weights(d, meta)
    model_cfg, data_cfg = load_export_configs(d, meta)
    stats_path = d / STATS_FILE
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    module = build_model(model_cfg, data_cfg)
    load_state_dict_strict(module, read_weights(d), str(d / WEIGHTS_FILE))
    dev = torch.device(device)
    module = module.to(dev).eval()
    return LoadedPolicy(module=module, model_cfg=model_cfg, data_cfg=data_cfg, stats=stats, meta=meta,
                        export_dir=d, device=dev)
