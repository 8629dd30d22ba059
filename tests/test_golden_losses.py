"""Golden losses: the first 20 steps of the quickstart and of the baseline, at a fixed seed, must not
change unless a commit means them to. A refactor that moves code (recipes, data_service, launchers)
must leave every number identical; a change that alters training on purpose rewrites the file with

    LAVLA_UPDATE_GOLDEN=1 pytest tests/test_golden_losses.py

and says why in its commit. The runs go through the real launcher on one CPU rank with one thread
(``run_deepspeed`` sets OMP_NUM_THREADS=1), which makes them bit-reproducible on a given machine:
where the CPU model, its vector capability and torch match the recorded ones, every value must be
identical; elsewhere (other SIMD kernels round differently) within 1e-4 relative, which still
catches any change in what is computed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import platform

import pytest
import torch

from tests.conftest import REPO, read_jsonl, run_deepspeed

GOLDEN = Path(__file__).parent / "fixtures" / "golden_losses.json"
STEPS = 20
CONFIGS = ("quickstart", "baseline")
REL_TOL_ELSEWHERE = 1e-4


def machine() -> dict[str, str]:
    """What decides the rounding of the recorded numbers."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def losses(config: str, run_dir: Path, data_root: Path) -> dict[str, list[float]]:
    """Every ``loss*`` series of the run's metrics.jsonl, step 1..STEPS."""
    args = ["--config", str(REPO / "configs" / f"{config}.yaml"), f"--run.dir={run_dir}",
            f"--data.synthetic.root={data_root}",
            f"--data.datasets=[{{name: synthetic_world, path: {data_root}/synthetic_world/1.0.0, split: train, "
            "weight: 1.0}]", f"--trainer.max_steps={STEPS}", "--trainer.log_every=1", "--eval.every_steps=0",
            "--checkpoint.every_steps=0", "--checkpoint.save_final=false"]
    run_deepspeed(args, num_ranks=1)
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    keys = sorted(k for k in records[0] if k == "loss" or k.startswith("loss/"))
    return {k: [r[k] for r in records] for k in keys}


@pytest.mark.parametrize("config", CONFIGS)
def test_first_steps_match_the_golden_losses(config, tmp_path_factory):
    data_root = tmp_path_factory.mktemp(f"golden_{config}_data")
    got = losses(config, tmp_path_factory.mktemp(f"golden_{config}") / "run", data_root)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("LAVLA_UPDATE_GOLDEN") == "1":
        golden[config] = {"machine": machine(), "losses": got}
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    assert config in golden, f"no golden losses for {config}: run LAVLA_UPDATE_GOLDEN=1 pytest {__file__}"
    want, exact = golden[config]["losses"], golden[config]["machine"] == machine()
    assert sorted(got) == sorted(want), f"{config}: logged loss terms changed: {sorted(got)} vs {sorted(want)}"
    for key in want:
        for step, (g, w) in enumerate(zip(got[key], want[key]), start=1):
            same = g == w if exact else g == pytest.approx(w, rel=REL_TOL_ELSEWHERE)
            assert same, (f"{config}: {key} at step {step} is {g!r}, golden {w!r} (first difference; "
                          f"{'same machine: must be identical' if exact else 'other machine: 1e-4 relative'})")
