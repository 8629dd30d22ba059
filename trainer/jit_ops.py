"""DeepSpeed's JIT-built CPU op, built once and never waited on in silence.

On CPU, ``deepspeed.init_distributed`` compiles its shared-memory allreduce op
(``deepspeed_shm_comm``) on first use, about a minute on two cores. torch guards that build with
a bare ``lock`` file in the build folder; a build killed half way (Ctrl-C in a user's first
2-rank run) leaves the file behind, and every later job polls it forever without a word.

``prepare_shm_comm_op`` runs before ``init_distributed``: ranks on one machine take turns under an
``flock`` (released by the kernel however its holder dies), a torch lock with no build process
behind it is removed and reported, and a long build or wait says what it is waiting for. The
loaded op is cached by DeepSpeed, so ``init_distributed`` does not build again.
``python -m lavla.trainer.jit_ops`` builds it ahead of time (``make install`` runs it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from pathlib import Path

from lavla.trainer.waiting import report_while_waiting

log = logging.getLogger(__name__)

SHM_COMM_BUILDER = "ShareMemCommBuilder"
STALE_AFTER_S = 10.0
"""A torch build lock older than this with no process building in its folder is a leftover.
(torch creates the lock a moment before it starts ninja in that folder.)"""


def shm_comm_build_dir(builder_name: str) -> Path:
    """The folder torch builds an extension in (``TORCH_EXTENSIONS_DIR`` or its per-Python default)."""
    from torch.utils.cpp_extension import _get_build_directory  # the exact rule torch uses

    return Path(_get_build_directory(builder_name, verbose=False))


def processes_in(folder: Path) -> list[int]:
    """Pids whose working directory is ``folder``: torch runs ninja, and ninja the compilers, there."""
    target = os.path.realpath(folder)
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                if os.path.realpath(entry / "cwd") == target:
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return pids


def remove_stale_build_lock(build_dir: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Remove torch's ``lock`` in ``build_dir`` if no build is behind it; True if one was removed.
    A lock with a live build waits (and says so) until that build releases it."""
    lock = build_dir / "lock"
    with report_while_waiting(f"the build holding {lock} (processes in {build_dir} are compiling)"):
        while lock.exists():
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                return False
            if not processes_in(build_dir) and age > stale_after_s:
                lock.unlink(missing_ok=True)
                msg = (f"removed a stale build lock {lock} ({age:.0f} s old, no build running): a "
                       "DeepSpeed op build was killed before it finished; building it again")
                log.warning(msg)
                print(msg, file=sys.stderr, flush=True)
                return True
            time.sleep(0.5)
    return False


def prepare_shm_comm_op() -> Path | None:
    """Build (first time) or load DeepSpeed's CPU shm comm op; the build folder, or None where
    DeepSpeed does not use it (CUDA, or an incompatible machine)."""
    import torch

    if torch.cuda.is_available():
        return None
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops import __compatible_ops__

    builder = get_accelerator().create_op_builder(SHM_COMM_BUILDER)
    if builder is None or not __compatible_ops__.get(builder.NAME, False):
        return None
    build_dir = shm_comm_build_dir(builder.name)
    turn = build_dir.parent / f".{builder.name}.lavla-turn"
    with open(turn, "a") as fh:
        with report_while_waiting(f"another process building {builder.name} (turn lock {turn})"):
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            remove_stale_build_lock(build_dir)
            fresh = not any(build_dir.glob("*.so"))
            what = (f"DeepSpeed's CPU op {builder.name} to compile in {build_dir} (first run on this "
                    "machine only; `python -m lavla.trainer.jit_ops` builds it ahead)") if fresh else \
                f"DeepSpeed's CPU op {builder.name} to load from {build_dir}"
            with report_while_waiting(what):
                builder.load(verbose=False)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return build_dir


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.monotonic()
    where = prepare_shm_comm_op()
    if where is None:
        print("DeepSpeed's CPU shm comm op is not used on this machine; nothing to build")
    else:
        print(f"DeepSpeed's CPU shm comm op is ready in {where} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
