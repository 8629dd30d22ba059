"""A real 2-rank DeepSpeed run (CPU, gloo) fed by the Ray data service (``--data.num_workers=2``)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from lavla.data_service.data_stats import STAT_KEYS
from tests.conftest import read_jsonl, run_deepspeed

pytestmark = pytest.mark.slow
pytest.importorskip("ray")


def test_two_ranks_train_from_the_ray_service(tmp_path: Path, tiny_world_args: list[str]) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    run_deepspeed([*tiny_world_args, f"--run.dir={run_dir}", "--trainer.max_steps=3", "--data.num_workers=2",
                   "--data.log_sample_ids=true", "--checkpoint.save_final=false"],
                  num_ranks=2, env={"LAVLA_CACHE_DIR": str(cache)})

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert set(STAT_KEYS) <= set(r) and r["data/samples"] > 0
    # Rank r of 2 took positions r, r+2, ... of each global batch of 8: together, each sample once.
    ids = {rank: [i for rec in read_jsonl(run_dir / f"samples.rank{rank}.jsonl") for i in rec["sample_ids"]]
           for rank in (0, 1)}
    assert ids[0] == [i for i in range(24) if i % 2 == 0] and ids[1] == [i for i in range(24) if i % 2 == 1]

    # The local Ray instance the leader started is gone with the job.
    (rendezvous,) = (cache / "ray").glob("*.json")
    session = json.loads(rendezvous.read_text())["session_dir"]
    assert session
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if session in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, leftovers
