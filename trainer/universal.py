"""Resuming at a different world size through DeepSpeed universal checkpoints.

A ZeRO checkpoint stores each rank's flat partition of parameters and optimizer moments, so it
only loads at the world size that wrote it. DeepSpeed's ``ds_to_universal`` rewrites it as one
file per parameter (fp32 weights, Adam moments) that any world size can load with the engine
config ``checkpoint.load_universal``. Here that conversion is:

* automatic: on resume, when the saved world size differs from this job's, rank 0 converts the
  checkpoint once into ``<checkpoint>/universal/`` (the other ranks wait for it);
* manual: ``python -m lavla.launcher.convert_checkpoint <checkpoint dir>`` does the same offline.

The conversion is complete-or-invisible like the checkpoints themselves: it writes into a
temporary sibling directory, renames it to ``universal/`` and only then writes the marker file.
The data position needs no conversion: it is a count of global samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UNIVERSAL_DIR = "universal"
"""Subdirectory of a checkpoint that holds its universal form (also the tag passed to DeepSpeed)."""
UNIVERSAL_MARKER = "UNIVERSAL_COMPLETE"
UNIVERSAL_FAILED = "UNIVERSAL_FAILED"

# DeepSpeed's converter requires this key in a ZeRO-1/2 checkpoint's client state (Megatron
# writes it; plain scripts do not), so every save carries it. ZeRO-3 conversion does not need it.
UNIVERSAL_CLIENT_STATE = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}


def universal_path(ckpt: Path) -> Path:
    return ckpt / UNIVERSAL_DIR


def is_converted(ckpt: Path) -> bool:
    return (ckpt / UNIVERSAL_MARKER).is_file() and universal_path(ckpt).is_dir()


def convert(ckpt: Path, workers: int = 1) -> Path:
    """Convert the DeepSpeed checkpoint in ``ckpt`` (a ``step_*`` directory) to ``ckpt/universal``.

    Idempotent: returns at once if already converted. Runs the converter in a child process, so
    its memory (every parameter of the model, in fp32, plus moments) is returned afterwards.
    """
    ckpt = Path(ckpt)
    out = universal_path(ckpt)
    if is_converted(ckpt):
        return out
    if not any(ckpt.glob("*optim_states.pt")):
        raise FileNotFoundError(f"{ckpt}: no DeepSpeed optimizer partitions (*optim_states.pt) to convert")
    tmp = ckpt / f".{UNIVERSAL_DIR}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (ckpt / UNIVERSAL_FAILED).unlink(missing_ok=True)
    t0 = time.perf_counter()
    if _saved_tensor_parallel_size(ckpt) > 1:
        try:
            _convert_tensor_parallel(ckpt, tmp, workers)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        try:
            run_ds_to_universal(ckpt, tmp, workers)
        except RuntimeError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    # The converter points a 'latest_universal' file next to its output at the temporary name;
    # the trainer loads by explicit tag, so drop it rather than leave a wrong pointer.
    (ckpt / "latest_universal").unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)  # a half-renamed leftover of an earlier attempt
    os.replace(tmp, out)
    (ckpt / UNIVERSAL_MARKER).write_text(json.dumps({"time": time.time(), "seconds": time.perf_counter() - t0}))
    log.info("converted %s to a universal checkpoint in %.1fs", ckpt, time.perf_counter() - t0)
    return out


def run_ds_to_universal(src: Path, out: Path, workers: int = 1) -> None:
    """DeepSpeed's converter on the checkpoint directory ``src`` into ``out``, in a child process (its
    memory, every parameter in fp32 plus moments, goes back to the system afterwards)."""
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src),
           "--output_folder", str(out), "--num_extract_workers", str(workers),
           "--num_merge_workers", str(max(1, workers // 2)), "--inject_missing_state"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"universal conversion of {src} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def _saved_tensor_parallel_size(ckpt: Path) -> int:
    state = ckpt / "trainer_state.json"
    return int(json.loads(state.read_text()).get("tensor_parallel_size", 1)) if state.is_file() else 1


def _convert_tensor_parallel(ckpt: Path, out: Path, workers: int) -> None:
    """A TP > 1 checkpoint's universal form is the TP=1 model's (``tensor_parallel.reshard``)."""
    from lavla.model.factory import build_model
    from lavla.trainer.config_io import load_config
    from lavla.trainer.tensor_parallel.reshard import convert_tp_to_universal

    cfg = load_config(["--config", str(ckpt / "config.yaml")])
    convert_tp_to_universal(ckpt, out, build_model(cfg.model, cfg.data), workers)


def ensure_converted(ckpt: Path, is_main: bool, workers: int = 1, poll_s: float = 1.0) -> Path:
    """Rank 0 converts; every rank returns once ``ckpt/universal`` is complete.

    The others poll the marker file instead of waiting in a collective: converting a large model
    can outlast the process group's timeout. (Rank 0, not each node's local rank 0: checkpoints
    live on a shared filesystem, and two converters would race on the same directory.)
    """
    ckpt = Path(ckpt)
    if is_main:
        try:
            return convert(ckpt, workers)
        except BaseException as e:
            (ckpt / UNIVERSAL_FAILED).write_text(str(e)[-2000:])
            raise
    while not is_converted(ckpt):
        failed = ckpt / UNIVERSAL_FAILED
        if failed.is_file():
            raise RuntimeError(f"rank 0 failed to convert {ckpt} to a universal checkpoint: {failed.read_text()}")
        time.sleep(poll_s)
    return universal_path(ckpt)


def ensure_tp_rank_converted(ckpt: Path, model_tp: Any, tp_rank: int, tp_size: int, is_writer: bool,
                            poll_s: float = 1.0) -> str:
    """This TP rank's universal form at TP ``tp_size`` (``tensor_parallel.reshard``), cut from the
    canonical ``ckpt/universal`` (which must exist); returns its tag. One rank per TP rank writes it
    (``is_writer``: data-parallel rank 0), the others wait for its marker, as for the canonical one."""
    from lavla.trainer.tensor_parallel.reshard import tp_rank_tag, write_tp_rank_universal

    ckpt = Path(ckpt)
    tag = tp_rank_tag(tp_size, tp_rank)
    out, marker, failed = ckpt / tag, ckpt / f"{tag}.COMPLETE", ckpt / f"{tag}.FAILED"
    if is_writer and not marker.is_file():
        tmp = ckpt / f".{tag}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        failed.unlink(missing_ok=True)
        try:
            write_tp_rank_universal(universal_path(ckpt), tmp, model_tp, tp_rank, tp_size)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            marker.write_text(json.dumps({"time": time.time()}))
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            failed.write_text(str(e)[-2000:])
            raise
        log.info("wrote TP rank %d's universal checkpoint at TP %d: %s", tp_rank, tp_size, out)
    while not marker.is_file():
        if failed.is_file():
            raise RuntimeError(f"TP rank {tp_rank}'s universal form of {ckpt} failed: {failed.read_text()}")
        time.sleep(poll_s)
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lavla.launcher.convert_checkpoint",
        description="Convert a trainer checkpoint (checkpoints/step_XXXXXXXX) to a DeepSpeed universal checkpoint "
        "so it can resume at another world size. Resuming does this automatically; this command does it ahead of time.",
    )
    parser.add_argument("checkpoint",
                        help="a step_* checkpoint directory, or a run directory (its newest complete checkpoint)")
    parser.add_argument("--workers", type=int, default=1, help="converter worker processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from lavla.trainer.checkpoint import is_complete, list_complete

    path = Path(args.checkpoint)
    if not is_complete(path):
        complete = list_complete(path / "checkpoints")
        if not complete:
            print(f"error: {path} is neither a complete checkpoint nor a run directory with one", file=sys.stderr)
            return 2
        path = complete[-1].path
    out = convert(path, args.workers)
    print(f"universal checkpoint: {out}")
    return 0
