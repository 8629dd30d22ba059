"""launcher.study: the run lists are well-formed, the table aggregates mean ± std over seeds, and an
interrupted study resumes by skipping finished runs. Fake runner: nothing trains here."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from lavla.launcher import study as st
from lavla.launcher import study_report as sr


@pytest.mark.parametrize("budget", sorted(st.BUDGETS))
def test_run_list_is_well_formed(budget: str) -> None:
    b = st.BUDGETS[budget]
    runs = st.study_runs(b)
    st.validate(runs)  # unique names, deps earlier, {export:X} only from deps, configs exist
    names = [r.name for r in runs]
    assert len(names) == len(set(names))
    by_name = {r.name: r for r in runs}
    for r in runs:
        assert all(d in by_name and names.index(d) < names.index(r.name) for d in r.deps)
        assert (st.REPO / "configs" / f"{r.config}.yaml").is_file()
    # every part, every seed; P2T has the five strategies at equal steps
    for s in b.seeds:
        c = [r for r in runs if r.part == "c" and r.seed == s]
        assert sorted(r.config for r in c) == sorted(st.STRATEGIES)
        assert len({r.steps for r in c}) == 1
        assert {r.part for r in runs if r.seed == s} == set(st.PARTS)
    lapa = [r for r in runs if r.config == "lapa_action"]
    assert lapa and all(r.labelled_only for r in lapa)
    assert any(r.deps for r in lapa) and any(not r.deps for r in lapa)  # init vs scratch
    # selecting a part pulls in its dependencies, still valid
    for part in "abc":
        sel = st.select(runs, [part])
        st.validate(sel)
        assert {r.part for r in sel} <= {part, "pre"}
    assert any(r.config == "lam_pretrain" for r in st.select(runs, ["b"]))  # the "before" probe row
    assert not any(r.config == "action_tokenizer" for r in st.select(runs, ["b"]))


def test_validate_rejects_bad_lists() -> None:
    a = st.Run("x", "a", "g", "lara", 0, 1)
    with pytest.raises(ValueError, match="duplicate"):
        st.validate([a, a])
    with pytest.raises(ValueError, match="earlier"):
        st.validate([st.Run("y", "a", "g", "lara", 0, 1, deps=("x",)), a])
    with pytest.raises(ValueError, match="not a dependency"):
        st.validate([a, st.Run("y", "a", "g", "lara", 0, 1, ("--m.i={export:x}",))])


def test_aggregation_mean_and_std_over_seeds() -> None:
    recs = [
        {"part": "c", "group": "baseline", "config": "baseline", "seed": s, "metrics": {"action/l1": v}}
        for s, v in enumerate([1.0, 2.0, 4.0])
    ] + [
        {"part": "c", "group": "la_tok", "config": "la_tok", "seed": 0, "metrics": {"action/l1": 0.5, "probe/r2": None}},
        {"part": "b", "group": "lara", "config": "lara", "seed": 0, "metrics": {"probe/r2": 0.2, "success_rate": 0.5}},
        {"part": "b", "group": "lara", "config": "lara", "seed": 1, "metrics": {"probe/r2": float("nan"),
                                                                                 "success_rate": 1.0}},
    ]
    rows = {r["group"]: r for r in sr.aggregate(recs)}
    base = rows["baseline"]["metrics"]["action/l1"]
    assert base["n"] == 3 and base["mean"] == pytest.approx(7 / 3)
    assert base["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert rows["la_tok"]["metrics"]["action/l1"] == {"mean": 0.5, "std": 0.0, "n": 1}
    assert "probe/r2" not in rows["la_tok"]["metrics"]
    lara = rows["lara"]["metrics"]
    assert lara["probe/r2"] == {"mean": 0.2, "std": 0.0, "n": 1}  # NaN dropped
    assert lara["success_rate"]["mean"] == pytest.approx(0.75)
    assert lara["success_rate"]["std"] == pytest.approx(math.sqrt(0.125))
    md = sr.render_markdown(sr.aggregate(recs), {"command": "x"})
    assert "2.3333 ± 1.5275" in md and "| lara |" in md


class FakeRunner:
    """Writes what the real steps would (a run dir, an export.json) and records each call."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.trained: list[str] = []
        self.fail_on = fail_on

    def train(self, args: list[str], log: Path) -> None:
        run_dir = Path(next(a for a in args if a.startswith("--run.dir=")).split("=", 1)[1])
        name = str(run_dir.parent.relative_to(run_dir.parents[3]))
        if name == self.fail_on:
            raise st.RunFailed(name)
        for a in args:  # dependencies' exports exist by the time a run reads them
            if "/export" in a and "=" in a and a.startswith("--model."):
                assert (Path(a.split("=", 1)[1]) / "export.json").is_file(), a
        self.trained.append(name)
        run_dir.mkdir(parents=True)
        log.write_text("trained\n")

    def export(self, run_dir: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "export.json").write_text("{}")

    def evaluate(self, export: Path, args: list[str], log: Path) -> dict[str, Any]:
        return {"action/l1": 0.1 * (1 + len(self.trained)), "probe/r2": 0.3}

    def rollout(self, export: Path, args: list[str], out: Path) -> dict[str, Any]:
        out.write_text(json.dumps({"success_rate": 0.5}))
        return {"success_rate": 0.5, "mean_steps": 3.0}


def test_study_resumes_skipping_finished_runs(tmp_path: Path) -> None:
    b = st.BUDGETS["tiny"]
    runs = st.study_runs(b, seeds=(0, 1))
    names = [r.name for r in runs]
    stop = names[5]
    first = FakeRunner(fail_on=stop)
    with pytest.raises(st.RunFailed):
        st.Study(b, runs, tmp_path, first, log=lambda _: None).run()
    assert first.trained == names[:5]
    # a half-done run (no metrics.json) is redone, finished ones are skipped
    (tmp_path / "runs" / stop / "export").mkdir(parents=True)
    second = FakeRunner()
    records = st.Study(b, runs, tmp_path, second, log=lambda _: None).run()
    assert second.trained == names[5:]
    assert [r["name"] for r in records] == names
    third = FakeRunner()
    assert st.Study(b, runs, tmp_path, third, log=lambda _: None).run() == records
    assert third.trained == []
    md, js = sr.write_results(tmp_path, records, {"command": "python -m lavla.launcher.study --budget tiny", "seeds": [0, 1]})
    table = json.loads(js.read_text())["table"]
    assert {row["group"] for row in table} == {r.group for r in runs}
    assert all(len(row["seeds"]) == 2 for row in table)
    assert "(c) Pixels-to-Tokens" in md.read_text()


def test_train_args_resolve_exports_and_the_labelled_split(tmp_path: Path) -> None:
    b = st.BUDGETS["tiny"]
    runs = {r.name: r for r in st.study_runs(b, seeds=(3,))}
    s = st.Study(b, list(runs.values()), tmp_path, FakeRunner())
    args = s.train_args(runs["a/lapa_action_init/s3"])
    assert f"--model.init_from={(tmp_path / 'runs' / 'a/lapa_latent/s3' / 'export').absolute()}" in args
    assert any("split: 'train[:10%]'" in a for a in args) and "--run.seed=3" in args
    assert not any("{export:" in a for a in args)
    assert any("split: 'train'" in a for a in s.train_args(runs["c/baseline/s3"]))


def test_cli_rejects_bad_parts() -> None:
    assert st.main(["--budget", "tiny", "--parts", "z"]) == 2


def test_rollout_metrics_pool_per_family_with_wilson_intervals() -> None:
    ro = {"success_rate": 0.5, "successes": 2, "episodes": 4, "mean_steps": 9.0,
          "per_task": {"move": {"successes": 2, "episodes": 3}, "pick": {"successes": 0, "episodes": 1}},
          "random_floor": {"successes": 1, "episodes": 4, "per_task": {"move": {"successes": 1, "episodes": 3}}}}
    m = st.rollout_metrics(ro)
    assert m["count/all"] == [2, 4] and m["count/move"] == [2, 3] and m["count/pick"] == [0, 1]
    assert m["random_floor/count/all"] == [1, 4] and m["random_floor/count/move"] == [1, 3]
    recs = [{"part": "c", "group": "baseline", "config": "baseline", "seed": s, "metrics": dict(m)} for s in (0, 1, 2)]
    row = sr.aggregate(recs)[0]
    assert row["pooled"]["count/all"] == [6, 12] and row["pooled"]["count/pick"] == [0, 3]
    assert sr.pooled_columns([row]) == ["count/all", "count/move", "count/pick", "random_floor/count/all"]
    md = sr.render_markdown([row], {"command": "x"})
    assert "6/12 = 50% [25, 75]" in md  # Wilson 95% interval of 6/12
    assert "0/3 = 0% [0, 56]" in md and "| random floor |" in md


def test_video_runs_read_the_human_clips_and_the_world_is_generated_once(tmp_path: Path) -> None:
    b = st.BUDGETS["tiny"]
    runs = {r.name: r for r in st.study_runs(b, seeds=(0,))}
    assert runs["a/lapa_latent/s0"].videos and not runs["c/baseline/s0"].videos
    s = st.Study(b, list(runs.values()), tmp_path, FakeRunner(), log=lambda _: None)
    video_args = s.train_args(runs["a/lapa_latent/s0"])
    assert any("name: synthetic_human_video" in a and "synthetic_human_video," in a for a in video_args)
    assert "--data.synthetic.tasks=[" + ",".join(b.tasks) + "]" in video_args
    s.prepare_data()
    assert (tmp_path / "data" / "synthetic_world" / "1.0.0" / "synthetic_config.json").is_file()
    assert len(list((tmp_path / "data" / "synthetic_human_video" / "videos").glob("train_*.mp4"))) == b.train_episodes
