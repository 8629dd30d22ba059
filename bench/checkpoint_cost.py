"""What a checkpoint costs the training: direct saves into the run dir vs staged saves
(``checkpoint.staging_dir``: a local write, then a background upload), measured in one run.

    python bench/checkpoint_cost.py [--ranks 2] [--dim 384] [--depth 6] [--steps 8] [--staging /dev/shm]

Both jobs train the quickstart recipe with a wider backbone and save after every step; each
prints the seconds every save kept the ranks waiting (``checkpoint/blocking_s``), the step time
and the checkpoint size. The ratio is staged / direct in the same run, on the same machine. The
gain depends on how much faster the staging disk is than the run dir's filesystem: on one local
disk it is small; with a network filesystem and local NVMe (or RAM) it is the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(run_dir: Path, ranks: int, dim: int, depth: int, steps: int, extra: list[str]) -> dict[str, float]:
    from lavla.trainer.ports import free_port

    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
           str(free_port()), str(REPO / "launcher" / "pretrain.py"), "--config", str(REPO / "configs" / "quickstart.yaml"),
           f"--run.dir={run_dir}", f"--data.synthetic.root={run_dir.parent / 'data'}",
           f"--data.datasets=[{{name: synthetic_world, path: {run_dir.parent / 'data'}/synthetic_world/1.0.0, "
           "split: train, weight: 1.0}]", "--data.synthetic.train_episodes=8", "--data.synthetic.val_episodes=2",
           f"--model.backbone.dim={dim}", f"--model.backbone.depth={depth}", "--model.backbone.heads=8",
           f"--trainer.max_steps={steps}", "--trainer.global_batch_size=4", f"--trainer.micro_batch_size={4 // ranks}",
           "--trainer.log_every=1", "--eval.every_steps=0", "--checkpoint.every_steps=1", "--checkpoint.keep_last=2",
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    blocking = [r["checkpoint/blocking_s"] for r in records if "checkpoint/blocking_s" in r]
    steps_s = [r["step_time_s"] for r in records[2:]]  # the first steps include warm-up
    newest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    size = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
    return {"blocking_s": statistics.median(blocking), "step_s": statistics.median(steps_s), "gib": size / 2**30}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--staging", default="/dev/shm", help="node-local staging dir (default /dev/shm)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ckpt_cost", dir=REPO / ".cache" if (REPO / ".cache").is_dir() else None) as tmp:
        root = Path(tmp)
        direct = _run(root / "direct", a.ranks, a.dim, a.depth, a.steps, [])
        staged = _run(root / "staged", a.ranks, a.dim, a.depth, a.steps, [f"--checkpoint.staging_dir={a.staging}"])
    print(f"checkpoint cost, {a.ranks} ranks, backbone dim {a.dim} x depth {a.depth}, "
          f"{direct['gib']:.3f} GiB per checkpoint, a save after every step (medians):")
    print(f"  direct into the run dir : training waits {direct['blocking_s']:.3f} s per save (step {direct['step_s']:.3f} s)")
    print(f"  staged via {a.staging:<12}: training waits {staged['blocking_s']:.3f} s per save (step {staged['step_s']:.3f} s)")
    print(f"  ratio staged / direct   : {staged['blocking_s'] / max(direct['blocking_s'], 1e-9):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
