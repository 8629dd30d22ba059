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

Staged saves (``checkpoint.staging_dir``, for cheap frequent checkpoints): every rank writes its
part to a node-local directory, which costs the training only that local write; a background
thread then moves the files into the run dir and leaves ``.parts/rank_<r>``. Rank 0 marks the
checkpoint complete when all parts are there. A node lost mid-upload leaves the checkpoint
without ``COMPLETE``, so the previous one stands. Uploads are one at a time: a save waits for
the previous upload, and the run's end waits for the last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lavla.trainer import distributed as dist_utils
from lavla.data_service.atomic import atomic_write
from lavla.trainer import faults
from lavla.trainer.universal import UNIVERSAL_CLIENT_STATE, UNIVERSAL_DIR, ensure_converted, ensure_tp_rank_converted

log = logging.getLogger(__name__)

_TAG_RE = re.compile(r"^step_(\d{8,})$")
COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest"
PARTS_DIR = ".parts"
"""Inside a staged checkpoint: one empty file per rank whose upload has finished."""


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


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

    def __init__(self, run_dir: Path, keep_last: int, convert_workers: int = 1, staging_dir: str = "") -> None:
        self.root = run_dir / "checkpoints"
        self.keep_last = keep_last
        self.convert_workers = convert_workers
        # One private staging folder per run and rank: jobs and ranks sharing a node never collide.
        run_key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
        self.staging = Path(staging_dir) / f"lavla-{run_key}" / f"rank_{dist_utils.rank()}" if staging_dir else None
        self._upload: threading.Thread | None = None
        self._upload_error: BaseException | None = None
        self.last_blocking_s = 0.0
        """Seconds the newest save kept training waiting (the whole save, or the local write if staged)."""

    def save(self, engine: Any, step: int, trainer_state: dict[str, Any], config_yaml: str,
             normalization_stats: dict[str, Any]) -> Path:
        if self.staging is not None:
            return self._save_staged(engine, step, trainer_state, config_yaml, normalization_stats)
        tag = tag_for_step(step)
        path = self.root / tag
        t0 = time.perf_counter()
        if dist_utils.is_main():
            if path.exists():  # an incomplete earlier attempt at this step
                shutil.rmtree(path)
            path.mkdir(parents=True)
        dist_utils.barrier()
        self._write_parts(engine, self.root, step, trainer_state, config_yaml, normalization_stats)
        # Only when every rank's files are on disk does the checkpoint become visible.
        dist_utils.barrier()
        if dist_utils.is_main():
            self._mark_complete(path, step)
            log.info("saved checkpoint %s in %.1fs", path, time.perf_counter() - t0)
        dist_utils.barrier()
        self.last_blocking_s = time.perf_counter() - t0
        return path

    @staticmethod
    def _write_parts(engine: Any, save_root: Path, step: int, trainer_state: dict[str, Any], config_yaml: str,
                     normalization_stats: dict[str, Any]) -> None:
        """This rank's files of checkpoint ``step`` under ``save_root/<tag>`` (rank 0 adds the
        metadata): the engine state, the RNG state and, on rank 0, state, config and statistics."""
        tag = tag_for_step(step)
        path = save_root / tag
        engine.save_checkpoint(str(save_root), tag=tag, client_state=dict(UNIVERSAL_CLIENT_STATE), save_latest=False)
        rng_dir = path / "rng"
        rng_dir.mkdir(exist_ok=True)
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, rng_dir / f"rank_{dist_utils.rank()}.pt")
        if dist_utils.is_main():
            atomic_write(path / "trainer_state.json", json.dumps({**trainer_state, "step": step}, indent=2))
            atomic_write(path / "config.yaml", config_yaml)
            atomic_write(path / "normalization_stats.json", json.dumps(normalization_stats, indent=2))
        faults.maybe_kill("kill_in_save", step)

    def _mark_complete(self, path: Path, step: int) -> None:
        """Rank 0, once every rank's part is in ``path``: make it the newest checkpoint."""
        atomic_write(path / COMPLETE_MARKER, json.dumps({"step": step, "time": time.time()}))
        atomic_write(self.root / LATEST_FILE, path.name)
        self._prune()

    # --- staged saves ----------------------------------------------------------------------
    def _save_staged(self, engine: Any, step: int, trainer_state: dict[str, Any], config_yaml: str,
                     normalization_stats: dict[str, Any]) -> Path:
        assert self.staging is not None
        self.wait_for_upload()
        t0 = time.perf_counter()
        tag = tag_for_step(step)
        path, local = self.root / tag, self.staging / tag
        if dist_utils.is_main():
            if path.exists():  # an incomplete earlier attempt at this step
                shutil.rmtree(path)
            (path / PARTS_DIR).mkdir(parents=True)
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        dist_utils.barrier()
        self._write_parts(engine, self.staging, step, trainer_state, config_yaml, normalization_stats)
        dist_utils.barrier()  # every rank's state is on its local disk: training may go on
        self.last_blocking_s = time.perf_counter() - t0
        world, main = dist_utils.world_size(), dist_utils.is_main()
        self._upload = threading.Thread(target=self._run_upload, args=(local, path, step, world, main, t0),
                                        name=f"checkpoint-upload-{step}", daemon=True)
        self._upload.start()
        return path

    def _run_upload(self, local: Path, path: Path, step: int, world: int, main: bool, t0: float) -> None:
        try:
            for src in sorted(p for p in local.rglob("*") if p.is_file()):
                dest = path / src.relative_to(local)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
            faults.maybe_kill("kill_in_upload", step)
            (path / PARTS_DIR / f"rank_{dist_utils.rank()}").touch()
            shutil.rmtree(local, ignore_errors=True)
            if not main:
                return
            parts, waited = path / PARTS_DIR, time.monotonic()
            while len(list(parts.iterdir())) < world:
                if time.monotonic() - waited > 60:
                    have = sorted(p.name for p in parts.iterdir())
                    log.warning("checkpoint %s: still waiting for the other ranks' uploads (%d of %d: %s)",
                                path.name, len(have), world, ", ".join(have))
                    waited = time.monotonic()
                time.sleep(0.05)
            self._mark_complete(path, step)
            log.info("saved checkpoint %s: training waited %.2fs, complete after %.1fs", path,
                     self.last_blocking_s, time.perf_counter() - t0)
        except BaseException as e:  # reported by the next save or the run's end, on the main thread
            self._upload_error = e

    def wait_for_upload(self) -> None:
        """Block until the previous staged checkpoint is uploaded (and, on rank 0, complete)."""
        if self._upload is not None:
            if self._upload.is_alive():
                t0 = time.perf_counter()
                self._upload.join()
                log.info("waited %.1fs for the previous checkpoint's upload", time.perf_counter() - t0)
            self._upload = None
        if self._upload_error is not None:
            error, self._upload_error = self._upload_error, None
            raise RuntimeError(f"uploading a staged checkpoint into {self.root} failed: {error}") from error

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

    def load(self, engine: Any, ckpt: CheckpointInfo, seed: int, tensor_parallel_size: int = 1) -> dict[str, Any]:
        """Restore engine state and RNG from ``ckpt``. At another layout (world or TP size) than the
        one that saved it, the engine must have been built with ``checkpoint.load_universal`` (see
        :func:`needs_universal`) and the checkpoint is converted first if needed."""
        world = dist_utils.world_size()
        saved_world = saved_world_size(ckpt)
        same_layout = saved_world == world and saved_tensor_parallel_size(ckpt) == tensor_parallel_size
        if not same_layout:
            ensure_converted(ckpt.path, dist_utils.is_main(), self.convert_workers)
            dist_utils.barrier()
            load_dir, tag = ckpt.path, UNIVERSAL_DIR
            if tensor_parallel_size > 1:  # each TP rank loads its own shard of the canonical (TP=1) form
                from lavla.trainer.tensor_parallel.mpu import current_layout

                layout = current_layout()
                tag = ensure_tp_rank_converted(ckpt.path, engine.module, layout.tp_rank, layout.tp_size,
                                               is_writer=layout.dp_rank == 0)
                dist_utils.barrier()
        else:
            load_dir, tag = ckpt.path.parent, ckpt.path.name
        load_path, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {load_dir / tag}")
        if same_layout:
            self._restore_rng(ckpt)
        else:
            reseed(seed, ckpt.step, dist_utils.data_parallel_rank())
            saved_tp = saved_tensor_parallel_size(ckpt)
            tp_change = f", TP {saved_tp} -> {tensor_parallel_size}" if saved_tp != tensor_parallel_size else ""
            log.warning("world size changed %d -> %d%s: loaded the universal form of %s; RNG streams reseeded "
                        "from (seed=%d, step=%d, rank) instead of restored (rank: the data-parallel rank)",
                        saved_world, world, tp_change, ckpt.path, seed, ckpt.step)
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


def saved_tensor_parallel_size(ckpt: CheckpointInfo) -> int:
    return int(ckpt.state.get("tensor_parallel_size", 1))


def needs_universal(ckpt: CheckpointInfo | None, world_size: int, allowed: bool, tensor_parallel_size: int = 1) -> bool:
    """True if resuming ``ckpt`` at ``world_size`` ranks and ``tensor_parallel_size`` goes through the
    universal format (decided before the engine is built: DeepSpeed reads ``load_universal`` from
    its config). Any TP layout converts through the TP=1 model's universal form (README, Tensor parallelism)."""
    if ckpt is None:
        return False
    saved_world, saved_tp = saved_world_size(ckpt), saved_tensor_parallel_size(ckpt)
    if saved_world == world_size and saved_tp == tensor_parallel_size:
        return False
    if not allowed:
        raise RuntimeError(
            f"{ckpt.path} was written by {saved_world} ranks at TP={saved_tp} but this job has {world_size} at TP={tensor_parallel_size}; "
            "set checkpoint.convert_on_world_size_change=true (or run python -m lavla.launcher.convert_checkpoint) "
            "to resume through a DeepSpeed universal checkpoint"
        )
    return True


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed this rank's torch RNGs from (seed, step, rank): distinct per rank, reproducible."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))  # also seeds CUDA
