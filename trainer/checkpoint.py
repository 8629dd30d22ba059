"""Checkpoints that survive preemption: complete-or-invisible, newest-complete-wins.

Layout under ``<run.dir>/checkpoints``::

    step_00000100/                 DeepSpeed engine state (every rank writes its partition)
        trainer_state.json         step, data-service state, world size (rank 0)
        rng/rank_<r>.pt            torch RNG state of each rank (tensors only)
        config.yaml                the resolved config of the run
        normalization_stats.json   per-dataset statistics the model was trained with
        COMPLETE                   written last, after every rank finished its part
        universal/                 (on demand) the same state in DeepSpeed's universal format,
        UNIVERSAL_COMPLETE         for resuming at another world size (trainer/universal.py)
    latest                         tag of the newest complete checkpoint (atomic rename)

A save killed half way leaves a directory without ``COMPLETE``; resumption ignores it and a later
save of the same step replaces it. Nothing here unpickles arbitrary objects: JSON for metadata,
``torch.load(weights_only=True)`` for RNG tensors (DeepSpeed's own engine files are the run's own).

RNG: at the same world size each rank gets its saved RNG state back, so a resumed run repeats
the uninterrupted one exactly. At another world size there is no meaningful mapping of old
streams to new ranks; each rank is reseeded from (seed, step, rank), deterministically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavla.trainer import distributed as dist_utils
from lavla.trainer import faults
from lavla.trainer.universal import UNIVERSAL_CLIENT_STATE, UNIVERSAL_DIR, ensure_converted

log = logging.getLogger(__name__)

_TAG_RE = re.compile(r"^step_(\d{8,})$")
COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest"


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint found on disk."""

    path: Path
    """The checkpoint's tag directory."""
    step: int
    """Optimizer steps completed when it was written."""
    state: dict[str, Any]
    """Contents of trainer_state.json."""


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file() and (path / "trainer_state.json").is_file()


def list_complete(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under ``root``, oldest first."""
    found = []
    if not root.is_dir():
        return found
    for child in root.iterdir():
        m = _TAG_RE.match(child.name)
        if m and child.is_dir() and is_complete(child):
            state = json.loads((child / "trainer_state.json").read_text())
            found.append(CheckpointInfo(path=child, step=int(m.group(1)), state=state))
    return sorted(found, key=lambda c: c.step)


def find_resume_checkpoint(resume: str, run_dir: Path) -> CheckpointInfo | None:
    """Resolve ``--resume``: ``never`` -> None; ``auto`` -> newest complete or None; else a path."""
    root = run_dir / "checkpoints"
    if resume == "never":
        if list_complete(root):
            raise FileExistsError(
                f"{run_dir} already holds checkpoints; pass --resume=auto to continue that run "
                "or choose a new --run.dir"
            )
        return None
    if resume == "auto":
        complete = list_complete(root)
        return complete[-1] if complete else None
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(f"--resume={resume}: not a complete checkpoint directory (no {COMPLETE_MARKER} marker)")
    m = _TAG_RE.match(path.name)
    state = json.loads((path / "trainer_state.json").read_text())
    return CheckpointInfo(path=path, step=int(m.group(1)) if m else int(state["step"]), state=state)


class CheckpointManager:
    """Collective save / load around a DeepSpeed engine (every rank must call save and load)."""

    def __init__(self, run_dir: Path, keep_last: int, convert_workers: int = 1) -> None:
        self.root = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.convert_workers = convert_workers

    def save(self, engine: Any, step: int, trainer_state: dict[str, Any], config_yaml: str,
             normalization_stats: dict[str, Any]) -> Path:
        tag = tag_for_step(step)
        path = self.root / tag
        t0 = time.perf_counter()
        if dist_utils.is_main():
            if path.exists():  # an incomplete earlier attempt at this step
                shutil.rmtree(path)
            path.mkdir(parents=True)
        dist_utils.barrier()
        engine.save_checkpoint(str(self.root), tag=tag, client_state=dict(UNIVERSAL_CLIENT_STATE), save_latest=False)
        rng_dir = path / "rng"
        rng_dir.mkdir(exist_ok=True)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, rng_dir / f"rank_{dist_utils.rank()}.pt")
        if dist_utils.is_main():
            _atomic_write(path / "trainer_state.json", json.dumps({**trainer_state, "step": step}, indent=2))
            _atomic_write(path / "config.yaml", config_yaml)
            _atomic_write(path / "normalization_stats.json", json.dumps(normalization_stats, indent=2))
        faults.maybe_kill("kill_in_save", step)
        # Only when every rank's files are on disk does the checkpoint become visible.
        dist_utils.barrier()
        if dist_utils.is_main():
            _atomic_write(path / COMPLETE_MARKER, json.dumps({"step": step, "time": time.time()}))
            _atomic_write(self.root / LATEST_FILE, tag)
            self._prune()
            log.info("saved checkpoint %s in %.1fs", path, time.perf_counter() - t0)
        dist_utils.barrier()
        return path

    def _prune(self) -> None:
        complete = list_complete(self.root)
        for old in complete[: max(0, len(complete) - self.keep_last)]:
            shutil.rmtree(old.path, ignore_errors=True)
        newest = complete[-1].step if complete else -1
        # Incomplete leftovers older than the newest complete one can never be resumed.
        for child in self.root.iterdir():
            m = _TAG_RE.match(child.name)
            if m and child.is_dir() and not is_complete(child) and int(m.group(1)) < newest:
                shutil.rmtree(child, ignore_errors=True)

    def load(self, engine: Any, ckpt: CheckpointInfo, seed: int) -> dict[str, Any]:
        """Restore engine state and RNG from ``ckpt``. At another world size than the one that
        saved it, the engine must have been built with ``checkpoint.load_universal`` (see
        :func:`needs_universal`) and the checkpoint is converted first if needed."""
        world = dist_utils.world_size()
        saved_world = saved_world_size(ckpt)
        if saved_world != world:
            ensure_converted(ckpt.path, dist_utils.is_main(), self.convert_workers)
            dist_utils.barrier()
            load_dir, tag = ckpt.path, UNIVERSAL_DIR
        else:
            load_dir, tag = ckpt.path.parent, ckpt.path.name
        load_path, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {load_dir / tag}")
        if saved_world == world:
            self._restore_rng(ckpt)
        else:
            reseed(seed, ckpt.step, dist_utils.rank())
            log.warning("world size changed %d -> %d: loaded the universal form of %s; RNG streams reseeded "
                        "from (seed=%d, step=%d, rank) instead of restored",
                        saved_world, world, ckpt.path, seed, ckpt.step)
        log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
        return ckpt.state

    @staticmethod
    def _restore_rng(ckpt: CheckpointInfo) -> None:
        rng_file = ckpt.path / "rng" / f"rank_{dist_utils.rank()}.pt"
        if not rng_file.is_file():
            log.warning("%s has no RNG state for rank %d; keeping the fresh seed", ckpt.path, dist_utils.rank())
            return
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])


def saved_world_size(ckpt: CheckpointInfo) -> int:
    return int(ckpt.state.get("world_size", dist_utils.world_size()))


def needs_universal(ckpt: CheckpointInfo | None, world_size: int, allowed: bool) -> bool:
    """True if resuming ``ckpt`` at ``world_size`` goes through the universal format (decided
    before the engine is built: DeepSpeed reads ``load_universal`` from its config)."""
    if ckpt is None or saved_world_size(ckpt) == world_size:
        return False
    if not allowed:
        raise RuntimeError(
            f"{ckpt.path} was written by {saved_world_size(ckpt)} ranks but this job has {world_size}; "
            "set checkpoint.convert_on_world_size_change=true (or run python -m lavla.launcher.convert_checkpoint) "
            "to resume through a DeepSpeed universal checkpoint"
        )
    return True


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed this rank's torch RNGs from (seed, step, rank): distinct per rank, reproducible."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))  # also seeds CUDA
