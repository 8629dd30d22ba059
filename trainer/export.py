"""Export a trained policy from a DeepSpeed checkpoint to a directory loadable without DeepSpeed.

``python -m lavla.launcher.export_policy <run dir | checkpoint dir> --out DIR [--tag TAG]``

1. Resolve the checkpoint: a run directory gives its newest *complete* checkpoint (the logic of
   ``--resume=auto``); a checkpoint directory must carry its ``COMPLETE`` marker (a save cut off
   half way is refused, naming it); ``--tag`` picks ``<run>/checkpoints/<tag>``.
2. Consolidate the ZeRO partitions into fp32 parameters on CPU with DeepSpeed's own
   ``zero_to_fp32`` (files only, no process group). Buffers (quantizer code counts, restart
   offsets...) and any ``get_extra_state`` entries come from rank 0's module state in their
   saved dtypes: ``zero_to_fp32`` would cast fp64 counters to fp32. A checkpoint written with
   tensor parallelism is consolidated per TP rank and merged back to the TP=1 model's names and
   layouts (``tensor_parallel.consolidate``): the export does not depend on the layout.
3. Build the model from the checkpoint's ``config.yaml`` with ``model.factory.build_model`` and
   load the state strictly (missing / unexpected / misshapen keys are listed).
4. Every ``VLBackbone`` submodule writes its assets (``export_assets``) into the export and
   returns ``model.*`` config overrides (paths relative to the export dir), applied to the config.
5. Write ``model.safetensors`` (tied tensors stored once, aliases in its metadata),
   ``config.yaml``, ``normalization_stats.json``, ``export.json`` into a temporary sibling
   directory, load it back with ``model.policy_io.load_policy`` (sha256, strict load), and only
   then rename it to ``--out``: an export is complete or absent.

Loading: ``model.policy_io.load_policy(DIR)`` (no DeepSpeed import).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lavla.model.policy_io import (
    ALIASES_METADATA_KEY,
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    EXTRA_STATE_FILE,
    META_FILE,
    STATS_FILE,
    WEIGHTS_FILE,
    PolicyLoadError,
    load_policy,
    load_state_dict_strict,
    sha256_file,
)
from lavla.trainer.checkpoint import (
    COMPLETE_MARKER,
    CheckpointInfo,
    find_resume_checkpoint,
    is_complete,
    list_complete,
)

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The export cannot be made (bad source, model mismatch, existing output...)."""


class IncompleteCheckpointError(ExportError, FileNotFoundError):
    """The named checkpoint has no COMPLETE marker (its save was cut off)."""


# -- 1. which checkpoint -------------------------------------------------------------------------

def _looks_like_checkpoint(p: Path) -> bool:
    return p.is_dir() and (any(p.glob("*model_states.pt")) or (p / "trainer_state.json").exists()
                           or p.name.startswith("step_"))


def _info(path: Path) -> CheckpointInfo:
    found = find_resume_checkpoint(str(path), path.parent.parent)  # an explicit path: checks COMPLETE
    assert found is not None
    return found


def _incomplete(p: Path) -> IncompleteCheckpointError:
    return IncompleteCheckpointError(
        f"checkpoint {p} is incomplete (no {COMPLETE_MARKER} marker): its save was cut off or is still "
        "running; export a complete one (pass the run directory to take the newest complete checkpoint)")


def resolve_checkpoint(path: str | os.PathLike, tag: str | None = None) -> CheckpointInfo:
    """The checkpoint to export: ``path`` itself, ``path``'s newest complete one (a run dir, or its
    ``checkpoints/`` dir) as ``--resume=auto`` picks it, or ``<path>/checkpoints/<tag>`` with ``tag``."""
    p = Path(path)
    if not p.exists():
        raise ExportError(f"{p}: no such run or checkpoint directory")
    if tag is not None:
        candidates = [p / "checkpoints" / tag, p / tag]
        if p.name == tag:
            candidates.insert(0, p)
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            tags = [c.path.name for c in list_complete(p / "checkpoints")] or [c.path.name for c in list_complete(p)]
            raise ExportError(f"{p}: no checkpoint tagged {tag!r}" + (f"; complete ones: {', '.join(tags)}" if tags else ""))
        if not is_complete(found):
            raise _incomplete(found)
        return _info(found)
    if is_complete(p):
        return _info(p)
    for root in (p / "checkpoints", p):  # a run dir, or its checkpoints/ dir
        if root.is_dir() and any(c.name.startswith("step_") for c in root.iterdir() if c.is_dir()):
            complete = list_complete(root)  # what --resume=auto takes: the newest complete one
            if not complete:
                incomplete = sorted(c.name for c in root.iterdir() if c.is_dir() and c.name.startswith("step_"))
                raise IncompleteCheckpointError(f"{root}: no complete checkpoint (incomplete: {', '.join(incomplete)}); "
                                                "a save was cut off before its COMPLETE marker")
            return complete[-1]
    if _looks_like_checkpoint(p):
        raise _incomplete(p)
    if (p / "checkpoints").is_dir():
        raise ExportError(f"{p}: the run has no checkpoints yet (checkpoints/ is empty)")
    raise ExportError(f"{p}: neither a run directory (with checkpoints/) nor a checkpoint directory")


# -- 2. consolidation ----------------------------------------------------------------------------

def _rank0_model_states(ckpt: Path) -> dict[str, Any]:
    for name in ("zero_pp_rank_0_mp_rank_00_model_states.pt", "mp_rank_00_model_states.pt"):
        if (ckpt / name).is_file():
            # DeepSpeed's own engine file (it holds the DeepSpeed config and version: not weights-only).
            return torch.load(ckpt / name, map_location="cpu", weights_only=False)
    raise ExportError(f"{ckpt}: no DeepSpeed model states (*model_states.pt); not a DeepSpeed checkpoint")


def consolidate_state_dict(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The full state of a DeepSpeed checkpoint dir on CPU: fp32 parameters (trainable and frozen,
    through ``zero_to_fp32``), buffers in their saved dtypes, and ``get_extra_state`` entries."""
    ckpt = Path(ckpt)
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints its accelerator and progress on stdout
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )

        state: dict[str, Any] = dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name))
    module_states = _rank0_model_states(ckpt)
    module = module_states.get("module") or {}
    buffer_names = set(module_states.get("buffer_names") or [])
    for name in buffer_names:
        if name in module:
            state[name] = module[name]  # zero_to_fp32 returns float buffers as fp32 (fp64 counters lose bits)
    for name, value in module.items():
        if name not in state and name.endswith("_extra_state"):
            state[name] = value
    return state


# -- 3./5. writing -------------------------------------------------------------------------------

def _split_for_safetensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Any]]:
    """``(tensors to store, {alias: stored name} of tied tensors, JSON extra state)``.

    safetensors refuses tensors that share memory: a tensor reachable under several names (tied
    weights: the same view of the same storage) is stored once under its first name; other
    overlapping views are stored as copies; non-tensor extra state goes to JSON."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    extra: dict[str, Any] = {}
    seen_views: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, value in state.items():
        if not isinstance(value, Tensor):
            try:
                json.dumps(value)
            except TypeError as e:
                raise ExportError(f"state entry {name!r} is a {type(value).__name__}, not a tensor or JSON value; "
                                  "the export cannot store it") from e
            extra[name] = value
            continue
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.numel() == 0:
            tensors[name] = t.contiguous().clone()
            continue
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in seen_views:
            aliases[name] = seen_views[view]
            continue
        seen_views[view] = name
        sptr = t.untyped_storage().data_ptr()
        if sptr in storages or not t.is_contiguous():
            t = t.contiguous().clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return tensors, aliases, extra


def save_state_dict(state: dict[str, Any], out_dir: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Any]]:
    """Write ``state`` as ``out_dir/model.safetensors`` (+ ``extra_state.json`` for non-tensor extra
    state); returns what :func:`_split_for_safetensors` made of it. ``model.policy_io.read_weights``
    reads it back, tied aliases included."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    tensors, aliases, extra = _split_for_safetensors(state)
    save_file(tensors, str(out_dir / WEIGHTS_FILE),
              metadata={"format": "pt", ALIASES_METADATA_KEY: json.dumps(aliases, sort_keys=True)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out_dir / WEIGHTS_FILE, 0o666 & ~umask)  # safetensors creates it 0600; an export is for sharing
    if extra:
        (out_dir / EXTRA_STATE_FILE).write_text(json.dumps(extra, indent=2, sort_keys=True))
    return tensors, aliases, extra


def apply_overrides(model_cfg: Any, overrides: dict[str, Any], source: str = "export_assets") -> None:
    """Set ``model.*`` dotted ``overrides`` (with or without the ``model.`` prefix) on ``model_cfg``."""
    for key, value in overrides.items():
        parts = (key.removeprefix("model.")).split(".")
        node = model_cfg
        for i, p in enumerate(parts):
            if not hasattr(node, p):
                raise ExportError(f"{source}: override 'model.{'.'.join(parts)}' names no config field "
                                  f"('{p}' not in {type(node).__name__})")
            if i == len(parts) - 1:
                setattr(node, p, value)
            else:
                node = getattr(node, p)


def _export_assets(model: nn.Module, out: Path) -> dict[str, Any]:
    from lavla.model.vl_backbone import VLBackbone

    overrides: dict[str, Any] = {}
    for name, sub in model.named_modules():
        if isinstance(sub, VLBackbone):
            got = sub.export_assets(out) or {}
            for k, v in got.items():
                k = k.removeprefix("model.")
                if k in overrides and overrides[k] != v:
                    raise ExportError(f"backbones disagree on override model.{k}: {overrides[k]!r} vs {v!r} ({name})")
                overrides[k] = v
    return overrides


def _normalization_facts(stats: dict[str, Any], mode: str, entries: list[Any] = ()) -> dict[str, Any]:
    """Mode and per-dataset absolute action dims: what inverting the normalization needs
    besides the statistics (the registry may not know the dataset on the robot side). A mixture
    entry's inline spec (``entries``) wins over the registry's."""
    from lavla.data_service.datasets.inline_spec import spec_for_entry
    from lavla.data_service.datasets.registry import get_spec

    inline = {e.name: e for e in entries if getattr(e, "spec", None)}
    datasets: dict[str, Any] = {}
    for name in stats:
        try:
            spec = spec_for_entry(inline[name]) if name in inline else get_spec(name)
        except KeyError:
            log.warning("dataset %s is not in the registry: its absolute action dims are not recorded", name)
            continue
        datasets[name] = {"action_absolute_mask": [bool(x) for x in spec.action_absolute_mask],
                          "action_dim": spec.action_dim if not spec.is_video else 0,
                          "embodiment_id": int(spec.embodiment_id), "is_video": bool(spec.is_video)}
    return {"mode": mode, "datasets": datasets}


def _versions() -> dict[str, str]:
    import safetensors

    versions = {"python": platform.python_version(), "torch": torch.__version__, "safetensors": safetensors.__version__}
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed
    versions["deepspeed"] = deepspeed.__version__
    from importlib.metadata import PackageNotFoundError, version

    with contextlib.suppress(PackageNotFoundError):  # running from a checkout that was never installed
        versions["latent_vla_pretrain"] = version("latent-vla-pretrain")
    return versions


def _load_checkpoint_model(ckpt: CheckpointInfo) -> tuple[nn.Module, Any]:
    """Steps 2-3: the model of ``ckpt`` built from its config.yaml with its consolidated state, in eval mode."""
    from lavla.model.factory import build_model
    from lavla.trainer.config_io import ConfigError, load_config

    try:
        cfg = load_config(["--config", str(ckpt.path / CONFIG_FILE)])
    except ConfigError as e:
        raise ExportError(f"{ckpt.path / CONFIG_FILE}: {e}") from e
    try:
        model = build_model(cfg.model, cfg.data)
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(f"{ckpt.path / CONFIG_FILE}: cannot build the model: {e}") from e
    if cfg.parallel.tensor_parallel_size > 1:  # megatron shards -> the TP=1 model's names and layouts
        from lavla.trainer.tensor_parallel.consolidate import consolidate_tp_checkpoint

        state = consolidate_tp_checkpoint(ckpt.path, model, consolidate_state_dict)
    else:
        state = consolidate_state_dict(ckpt.path)
    try:
        load_state_dict_strict(model, state, f"checkpoint {ckpt.path}")
    except PolicyLoadError as e:
        raise ExportError(str(e)) from e
    return model.eval(), cfg


def load_checkpoint_model(source: str | os.PathLike, tag: str | None = None) -> tuple[nn.Module, Any, Path]:
    """``(model in eval mode on CPU, its PretrainConfig, checkpoint dir)`` straight from a training
    checkpoint, resolved as for an export (a run dir gives its newest complete checkpoint), without
    writing an export: for tools that read a model in place (LAM annotation and probes)."""
    ckpt = resolve_checkpoint(source, tag)
    model, cfg = _load_checkpoint_model(ckpt)
    return model, cfg, ckpt.path


def export_policy(source: str | os.PathLike, out: str | os.PathLike, *, tag: str | None = None,
                  overwrite: bool = False, verify: bool = True) -> dict[str, Any]:
    """Export the checkpoint resolved from ``source`` (see :func:`resolve_checkpoint`) to ``out``.

    Returns the contents of ``export.json``. ``out`` must not exist unless ``overwrite``; it
    appears only once complete (and, with ``verify``, loaded back successfully)."""
    from lavla.model.config import ModelConfig
    from lavla.trainer.config_io import dump_config

    t0 = time.perf_counter()
    out = Path(out).absolute()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists; choose another --out or pass --overwrite")
    ckpt = resolve_checkpoint(source, tag)
    log.info("exporting %s (step %d) to %s", ckpt.path, ckpt.step, out)
    stats_src = ckpt.path / STATS_FILE
    if not stats_src.is_file():
        raise ExportError(f"{ckpt.path}: no {STATS_FILE}; the policy's actions could not be unnormalized")
    model, cfg = _load_checkpoint_model(ckpt)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        overrides = _export_assets(model, tmp)
        apply_overrides(cfg.model, overrides)
        asset_paths = sorted(k for k, v in overrides.items()
                             if isinstance(v, str) and v and not os.path.isabs(v) and (tmp / v).exists())

        tensors, aliases, extra = save_state_dict(model.state_dict(), tmp)
        (tmp / CONFIG_FILE).write_text(dump_config(cfg))
        stats_text = stats_src.read_text()
        (tmp / STATS_FILE).write_text(stats_text)
        stats = json.loads(stats_text)

        params = {id(p): p for p in model.parameters()}
        meta = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "recipe": ModelConfig.get_choice_name(type(cfg.model)),
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "source": {"checkpoint": str(ckpt.path.resolve()), "tag": ckpt.path.name, "step": ckpt.step,
                       "world_size": ckpt.state.get("world_size"),
                       "consumed_samples": (ckpt.state.get("data") or {}).get("consumed")},
            "step": ckpt.step,
            "parameters": sum(p.numel() for p in params.values()),
            "trainable_parameters": sum(p.numel() for p in params.values() if p.requires_grad),
            "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(tmp / WEIGHTS_FILE),
                        "size_bytes": (tmp / WEIGHTS_FILE).stat().st_size, "tensors": len(tensors),
                        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})},
            "tied": aliases,
            "extra_state": sorted(extra),
            "overrides": overrides,
            "asset_paths": asset_paths,
            "normalization": _normalization_facts(stats, cfg.data.normalization, list(cfg.data.datasets)),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if verify:  # the exact path a user takes: sha256, config decode, strict load
            try:
                load_policy(tmp, verify=True)
            except PolicyLoadError as e:
                raise ExportError(f"the export does not load back: {e}") from e
        if out.exists():
            trash = out.parent / f".{out.name}.old{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s: %d parameters, %d tensors (%d tied) in %.1fs", out, meta["parameters"], len(tensors),
             len(aliases), time.perf_counter() - t0)
    return meta
