"""What every elastic test asserts about a finished run that changed size on the way."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tests.conftest import read_jsonl


def executions(run_dir: Path) -> dict[int, list[dict[int, list[list[int]]]]]:
    """Every execution of every step, in order: {step: [{rank: [micro batch ids, ...]}, ...]}.

    An execution's lines are consecutive in a rank's file and start at micro 0; a step run again
    after a restart is a later execution. Rank 0 exists in every attempt, so its file orders them.
    """
    per_rank: dict[int, dict[int, list[tuple[int, list[list[int]]]]]] = {}
    for path in sorted(run_dir.glob("samples.rank*.jsonl")):
        rank = int(path.name.split("rank")[1].split(".")[0])
        steps: dict[int, list[tuple[int, list[list[int]]]]] = defaultdict(list)
        for r in read_jsonl(path):
            if r["micro"] == 0:
                steps[r["step"]].append((r["world"], []))
            steps[r["step"]][-1][1].append(r["sample_ids"])
        per_rank[rank] = steps
    out: dict[int, list[dict[int, list[list[int]]]]] = {}
    for step, runs0 in per_rank[0].items():
        out[step] = []
        for i, (world, micros) in enumerate(runs0):
            execution = {0: micros}
            for rank in range(1, world):
                # The matching execution of rank r: the same ordinal among its runs at this world size.
                same = [m for w, m in per_rank.get(rank, {}).get(step, []) if w == world]
                ordinal = sum(1 for w, _ in runs0[: i + 1] if w == world) - 1
                if ordinal < len(same):
                    execution[rank] = same[ordinal]
            out[step].append(execution)
    return out


def global_batch(execution: dict[int, list[list[int]]]) -> list[int]:
    """The global batch in plan order: rank r's j-th sample sits at position r + W*j."""
    world = len(execution)
    flat = {r: [i for micro in m for i in micro] for r, m in execution.items()}
    out = [None] * sum(len(v) for v in flat.values())
    for r, ids in flat.items():
        for j, i in enumerate(ids):
            out[r + world * j] = i
    return out


def last_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}


def assert_elastic_run_matches(run_dir: Path, reference: Path, steps: int, every: int) -> list[dict]:
    """The final execution of every step took exactly the reference's global batch, in plan order;
    steps ran again only after restarts, as many as the restart events say (plus at most the step
    a killed group was in); the loss continues from the checkpoints. Returns the restart events."""
    got, ref = executions(run_dir), executions(reference)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        final = got[step][-1]
        assert len(final) == max(final) + 1, f"step {step}: ranks missing from its last execution {sorted(final)}"
        assert global_batch(final) == global_batch(ref[step][-1]), f"step {step} took other samples"

    records = last_records(run_dir)
    assert sorted(records) == list(range(1, steps + 1))
    events = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "resize/new_world_size" in r]
    replayed = sum(len(runs) - 1 for runs in got.values())
    claimed = sum(e["resize/steps_replayed"] for e in events)
    assert claimed <= replayed <= claimed + len(events), (replayed, events)
    for e in events:
        assert 0 <= e["resize/steps_replayed"] <= every, e
        # From a cadence checkpoint, or from the one the trainers saved when asked to stop (torchrun's
        # SIGTERM when agents join), which replays nothing.
        assert e["resize/resumed_from_step"] % every == 0 or e["resize/steps_replayed"] == 0, e
        # Lost: the downtime plus the replay, less the one step of new work in that span.
        assert e["resize/downtime_s"] > 0 and 0 <= e["resize/seconds_lost"], e

    # The loss continues from the checkpoint. The alignment term is the one that falls steadily
    # here (1.0 -> 0.01 in 36 steps). It does depend on the noise, which is reseeded at another
    # world size, so a resumed run drifts a few steps ahead of or behind the reference (one CI run
    # was at step 21 where the reference was at step 24). Right after each resume it lies in the
    # band the reference crossed within one checkpoint interval of that step, far from the start.
    ref = last_records(reference)
    for e in events:
        s = e["resize/resumed_from_step"] + 1
        got_align = records[s]["loss/align"]
        band = [ref[t]["loss/align"] for t in range(max(1, s - every), min(steps, s + every) + 1)]
        lo, hi = 0.75 * min(band), 1.25 * max(band)
        assert lo <= got_align <= hi, (s, got_align, (lo, hi))
        assert got_align < 0.5 * ref[1]["loss/align"], (s, got_align)
    return events
