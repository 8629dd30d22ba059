"""A fixed miniature study on the synthetic world, on CPU: every run trains through the real launcher.

    python -m lavla.launcher.study --budget {tiny,small} [--out DIR] [--seeds 0,1,2] [--parts a,b,c]

Parts (each run is ``deepspeed --num_gpus 1 launcher/pretrain.py --config configs/<recipe>.yaml ...``,
then exported with ``trainer.export.export_policy``, scored offline on the held-out ``val`` split with
``python -m lavla.launcher.evaluate`` and, for action policies, in closed loop with ``python -m lavla.launcher.rollout``):

* ``pre``  shared pretraining: a Moto-style LAM (``configs/lam_pretrain.yaml`` at LARA's LAM config, so
  its export also initialises the online LAM of ``lapa_latent`` and the Pixels-to-Tokens strategies)
  and the LA-Tok action tokenizer (``configs/action_tokenizer.yaml``). Pulled in as dependencies.
* ``a``    LAPA: ``lapa_latent`` on the synthetic world's human-video clips (the same episodes seen with
  a hand instead of the gripper, no action labels: LAPA pretrains on video), then ``lapa_action``
  from that export (``model.init_from``) on the first 10% of the labelled robot episodes
  (``train[:10%]``) vs ``lapa_action`` from scratch on the same 10%.
* ``b``    LARA vs its DiT-only ablation (``align_weight=0, lam_weight=0``); the LAM probe R^2 of the
  LAM trained alone (same LAM config, same steps as the ``pre`` LAM) against LARA's jointly trained LAM.
* ``c``    the five Pixels-to-Tokens strategies (baseline, la_align, la_direct, la_cond, la_tok) at equal steps.

Design: :func:`study_runs` is a declarative list of :class:`Run` (name, recipe config, overrides,
the runs whose export it reads); :class:`Study` executes it in order and is resumable: a run whose
``runs/<name>/export/export.json`` and ``runs/<name>/metrics.json`` exist in ``--out`` is skipped,
anything half-done is redone from scratch. Each run keeps ``train.log``, ``eval.log``,
``rollout.json`` and ``metrics.json`` under ``--out/runs/<name>/``. The final table (mean ± sample
std over seeds; closed-loop success pooled over seeds with its Wilson 95% interval, per task family
and against the random-action floor) is written to ``--out/results.md`` and ``--out/results.json``
with the command, seeds, date and wall time. The world (robot episodes and human-video clips) is
generated once, before the first run.

Budgets (:data:`BUDGETS`): ``tiny`` is a smoke test of a few minutes; ``small`` takes about 2.5 h of
machine time on 2 CPU cores (3 seeds; measured 2026-12-06) on a move/rotate/pick world, with 50 closed-loop episodes per run at
2x the episode length;
``gpu`` is sized for one H100/H200 hour. Exit codes: 0 done, 1 a run failed (the study stops; rerun
to continue), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lavla.model.config import LamConfig
from lavla.model.recipes.pixels_to_tokens.config import FPT_STRATEGIES
from lavla.launcher.study_report import PART_TITLES, TABLE_METRICS, write_results
from lavla.trainer.ports import free_port

REPO = Path(__file__).resolve().parents[1]

PARTS = tuple(PART_TITLES)
STRATEGIES = FPT_STRATEGIES


@dataclass(frozen=True)
class Budget:
    name: str
    steps: int                 # steps of every compared (downstream) run
    pre_steps: int             # steps of the LAM, lapa_latent and the action tokenizer
    train_episodes: int
    val_episodes: int
    episode_length: int
    global_batch_size: int
    micro_batch_size: int
    seeds: tuple[int, ...]
    eval_batches: int          # 0 = one pass over the val split
    eval_batch_size: int
    rollout_episodes: int      # 0 = no closed loop
    rollout_max_steps: int
    labelled_split: str = "train[:10%]"
    lr: float = 0.001
    tasks: tuple[str, ...] = ("pick", "push", "move", "place", "rotate")  # the world's task families
    lam_steps: int = 0         # steps of the shared LAM (0 = pre_steps)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget("tiny", steps=6, pre_steps=6, train_episodes=20, val_episodes=4, episode_length=16,
                   global_batch_size=8, micro_batch_size=8, seeds=(0,), eval_batches=2, eval_batch_size=16,
                   rollout_episodes=1, rollout_max_steps=8),
    # ~2.5 h of machine time for 3 seeds on 2 CPU cores (measured): the families the targets name
    # (move, rotate, pick), policies past the ~300 steps a tiny one needs to leave the median predictor.
    "small": Budget("small", steps=400, pre_steps=400, train_episodes=300, val_episodes=40, episode_length=24,
                    global_batch_size=16, micro_batch_size=16, seeds=(0, 1, 2), eval_batches=0, eval_batch_size=32,
                    rollout_episodes=50, rollout_max_steps=48, tasks=("move", "rotate", "pick"), lam_steps=1000),
    # One H100/H200 hour: a bigger world and ~20x the steps (run by bench/gpu_suite.sh's ``study`` step).
    "gpu": Budget("gpu", steps=3000, pre_steps=3000, train_episodes=1000, val_episodes=50, episode_length=40,
                  global_batch_size=64, micro_batch_size=64, seeds=(0, 1, 2), eval_batches=0, eval_batch_size=64,
                  rollout_episodes=100, rollout_max_steps=80, lr=5e-4),
}


@dataclass(frozen=True)
class Run:
    """One training run. ``overrides`` may hold ``{export:NAME}``: the export dir of run ``NAME``,
    which must be listed in ``deps`` (and come earlier in the study)."""

    name: str
    part: str
    group: str                 # the table row: runs of one group differ only by seed
    config: str                # configs/<config>.yaml
    seed: int
    steps: int
    overrides: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    labelled_only: bool = False  # train on budget.labelled_split instead of all of train
    evaluate: bool = True
    rollout: bool = False
    also_for: tuple[str, ...] = ()  # parts whose comparison reads this run's metrics (selected with them)
    videos: bool = False       # train on the world's human-video clips instead of the robot episodes


def export_ref(name: str) -> str:
    return "{export:" + name + "}"


def study_runs(budget: Budget, seeds: Iterable[int] | None = None) -> list[Run]:
    """The full declarative run list of ``budget`` (all parts), in dependency order."""
    seeds = tuple(budget.seeds if seeds is None else seeds)
    roll = budget.rollout_episodes > 0
    bins = ("--model.num_bins=32", "--model.bins_fit_samples=2000")
    runs: list[Run] = []
    for s in seeds:
        lam, tok = f"pre/lam/s{s}", f"pre/action_tokenizer/s{s}"
        lam_init = f"--model.latent.lam_init={export_ref(lam)}"
        lara_lam = ("--model.lam.image_size=64", "--data.image_size=64", "--data.synthetic.image_size=64",
                    "--model.lam.encoder.dim=64", "--model.lam.encoder.heads=4", "--model.lam.dim=64",
                    "--model.lam.depth=2", "--model.lam.heads=4", "--model.lam.num_queries=8",
                    "--model.lam.latent_dim=32", "--model.lam.decoder_dim=32", "--model.lam.decoder_depth=2",
                    "--model.lam.motion_weight=20",
                    # LARA's decoder, not lam_pretrain.yaml's FiLM one: part (b) compares the two LAMs
                    f"--model.lam.decoder_conditioning={LamConfig().decoder_conditioning}")
        runs += [
            # the LAM trained alone (= LARA's LAM config; also the "before" row of part b)
            Run(lam, "pre", "LAM alone (lam_pretrain @ LARA's LAM config)", "lam_pretrain", s,
                budget.lam_steps or budget.pre_steps, lara_lam, also_for=("b",)),
            Run(tok, "pre", "action tokenizer", "action_tokenizer", s, budget.pre_steps, evaluate=False),
            # (a) LAPA
            Run(f"a/lapa_latent/s{s}", "a", "lapa_latent (stage 2, on human-video clips)", "lapa_latent", s,
                budget.pre_steps, (lam_init,), deps=(lam,), videos=True),
            Run(f"a/lapa_action_init/s{s}", "a", "lapa_action from lapa_latent (10% labelled)", "lapa_action", s,
                budget.steps, (f"--model.init_from={export_ref(f'a/lapa_latent/s{s}')}", *bins),
                deps=(f"a/lapa_latent/s{s}",), labelled_only=True, rollout=roll),
            Run(f"a/lapa_action_scratch/s{s}", "a", "lapa_action from scratch (10% labelled)", "lapa_action", s,
                budget.steps, ("--model.init_from=", *bins), labelled_only=True, rollout=roll),
            # (b) LARA vs DiT-only
            Run(f"b/lara/s{s}", "b", "LARA (joint LAM + DiT)", "lara", s, budget.steps, rollout=roll),
            Run(f"b/dit_only/s{s}", "b", "DiT only (align_weight=0, lam_weight=0)", "lara", s, budget.steps,
                ("--model.align_weight=0", "--model.lam_weight=0"), rollout=roll),
        ]
        # (c) Pixels-to-Tokens at equal steps
        for strat in STRATEGIES:
            over: tuple[str, ...] = ()
            deps: tuple[str, ...] = ()
            if strat == "la_tok":
                over, deps = (f"--model.tokenizer_init={export_ref(tok)}",), (tok,)
            elif strat != "baseline":
                over, deps = (lam_init,), (lam,)
            runs.append(Run(f"c/{strat}/s{s}", "c", strat, strat, s, budget.steps, over, deps, rollout=roll))
    return runs


def select(runs: list[Run], parts: Iterable[str]) -> list[Run]:
    """The runs of ``parts`` plus every run they depend on (transitively), in the original order."""
    by_name = {r.name: r for r in runs}
    parts = set(parts)
    keep = {r.name for r in runs if r.part in parts or parts & set(r.also_for)}
    todo = list(keep)
    while todo:
        for d in by_name[todo.pop()].deps:
            if d not in keep:
                keep.add(d)
                todo.append(d)
    return [r for r in runs if r.name in keep]


def validate(runs: list[Run]) -> None:
    """Names unique; every dependency is an earlier run; every ``{export:X}`` is a declared dependency."""
    seen: set[str] = set()
    for r in runs:
        if r.name in seen:
            raise ValueError(f"duplicate run name {r.name!r}")
        for d in r.deps:
            if d not in seen:
                raise ValueError(f"{r.name}: dependency {d!r} is not an earlier run")
        for o in r.overrides:
            for ref in _refs(o):
                if ref not in r.deps:
                    raise ValueError(f"{r.name}: {o!r} reads the export of {ref!r}, not a dependency")
        if r.part not in PARTS or not Path(REPO / "configs" / f"{r.config}.yaml").is_file():
            raise ValueError(f"{r.name}: bad part {r.part!r} or config {r.config!r}")
        seen.add(r.name)


def _refs(text: str) -> list[str]:
    out, i = [], 0
    while (i := text.find("{export:", i)) >= 0:
        j = text.index("}", i)
        out.append(text[i + len("{export:"):j])
        i = j + 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# Executing runs


class Runner(Protocol):
    def train(self, args: list[str], log: Path) -> None: ...
    def export(self, run_dir: Path, out: Path) -> None: ...
    def evaluate(self, export: Path, args: list[str], log: Path) -> dict[str, Any]: ...
    def rollout(self, export: Path, args: list[str], out: Path) -> dict[str, Any]: ...


class RunFailed(RuntimeError):
    pass


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline",
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))}


class SubprocessRunner:
    """The real thing: the DeepSpeed launcher, ``trainer.export``, ``launcher.evaluate``, ``launcher.rollout``."""

    def __init__(self, threads: int = 2, timeout: float = 3600.0) -> None:
        self.threads, self.timeout = threads, timeout

    def _call(self, cmd: list[str], log: Path) -> str:
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            proc = subprocess.run(cmd, cwd=REPO, env=_env(self.threads), stdout=subprocess.PIPE, stderr=f,
                                  text=True, timeout=self.timeout, check=False)
            f.write(proc.stdout)
        if proc.returncode != 0:
            raise RunFailed(f"{cmd[2] if len(cmd) > 2 else cmd[0]} exited {proc.returncode}; see {log}")
        return proc.stdout

    def train(self, args: list[str], log: Path) -> None:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port",
               str(free_port()), str(REPO / "launcher" / "pretrain.py"), *args]
        self._call(cmd, log)

    def export(self, run_dir: Path, out: Path) -> None:
        from lavla.trainer.export import export_policy

        export_policy(run_dir, out, overwrite=True)

    def evaluate(self, export: Path, args: list[str], log: Path) -> dict[str, Any]:
        out = self._call([sys.executable, "-m", "lavla.launcher.evaluate", "--checkpoint", str(export), *args], log)
        return json.loads(out[out.index("{"):])

    def rollout(self, export: Path, args: list[str], out: Path) -> dict[str, Any]:
        self._call([sys.executable, "-m", "lavla.launcher.rollout", "--policy", str(export), "--out", str(out), *args],
                   out.with_suffix(".log"))
        return json.loads(out.read_text())


def rollout_metrics(ro: dict[str, Any]) -> dict[str, Any]:
    """What the table keeps of a ``launcher.rollout`` result: the overall and per-family success with
    their counts (so seeds pool into one interval), and the random-action floor the same way."""
    out: dict[str, Any] = {k: ro[k] for k in ("success_rate", "mean_steps") if k in ro}
    sources = [("", ro)] + ([("random_floor/", ro["random_floor"])] if ro.get("random_floor") else [])
    for prefix, res in sources:
        if "successes" in res and "episodes" in res:
            out[f"{prefix}count/all"] = [int(res["successes"]), int(res["episodes"])]
        for task, t in (res.get("per_task") or {}).items():
            out[f"{prefix}count/{task}"] = [int(t["successes"]), int(t["episodes"])]
    return out


@dataclass
class Study:
    budget: Budget
    runs: list[Run]
    out: Path
    runner: Runner = field(default_factory=SubprocessRunner)
    log: Callable[[str], None] = print
    prepare: bool = True       # generate the world before the first run (tests with a fake runner skip it)

    def run_dir(self, r: Run) -> Path:
        return self.out / "runs" / r.name

    def export_dir(self, r: Run | str) -> Path:
        name = r if isinstance(r, str) else r.name
        return self.out / "runs" / name / "export"

    def is_done(self, r: Run) -> bool:
        d = self.run_dir(r)
        return (d / "export" / "export.json").is_file() and (d / "metrics.json").is_file()

    @property
    def data_root(self) -> Path:
        return (self.out / "data").absolute()

    def train_args(self, r: Run) -> list[str]:
        b, root = self.budget, self.data_root
        split = b.labelled_split if r.labelled_only else "train"
        overrides = []
        for o in r.overrides:
            for ref in _refs(o):
                o = o.replace("{export:" + ref + "}", str(self.export_dir(ref).absolute()))
            overrides.append(o)
        return ["--config", str(REPO / "configs" / f"{r.config}.yaml"),
                f"--run.dir={(self.run_dir(r) / 'train').absolute()}", f"--run.seed={r.seed}",
                f"--data.seed={r.seed}",
                f"--data.synthetic.root={root}", f"--data.synthetic.train_episodes={b.train_episodes}",
                f"--data.synthetic.val_episodes={b.val_episodes}",
                f"--data.synthetic.episode_length={b.episode_length}", "--data.synthetic.image_size=64",
                "--data.synthetic.seed=0", "--data.synthetic.tasks=[" + ",".join(b.tasks) + "]",
                (f"--data.datasets=[{{name: synthetic_human_video, path: {root}/synthetic_human_video, "
                 f"split: '{split}', weight: 1.0}}]" if r.videos else
                 f"--data.datasets=[{{name: synthetic_world, path: {root}/synthetic_world/1.0.0, "
                 f"split: '{split}', weight: 1.0}}]"),
                f"--trainer.max_steps={r.steps}", f"--trainer.global_batch_size={b.global_batch_size}",
                f"--trainer.micro_batch_size={b.micro_batch_size}", "--trainer.log_every=1",
                f"--optim.lr={b.lr}", f"--optim.warmup_steps={max(0, r.steps // 10)}",
                "--checkpoint.every_steps=0", "--checkpoint.save_final=true", *overrides]

    def world_config(self) -> Any:
        """The synthetic world every run trains on (``train_args`` passes the same fields)."""
        from lavla.data_service.config import SyntheticDataConfig

        b = self.budget
        return SyntheticDataConfig(enabled=True, root=str(self.data_root), train_episodes=b.train_episodes,
                                   val_episodes=b.val_episodes, episode_length=b.episode_length, image_size=64,
                                   seed=0, tasks=list(b.tasks))

    def prepare_data(self) -> None:
        """Generates the world (and its human-video clips when a run reads them) once, up front."""
        from lavla.data_service.synthetic import (
            generate_synthetic_human_video,
            generate_synthetic_world,
        )

        cfg = self.world_config()
        self.log(f"world: {self.data_root} ({', '.join(self.budget.tasks)}; {cfg.train_episodes} train episodes)")
        generate_synthetic_world(cfg)
        if any(r.videos for r in self.runs):
            generate_synthetic_human_video(cfg)

    def eval_args(self, r: Run) -> list[str]:
        return ["--split", "val", "--max-batches", str(self.budget.eval_batches), "--batch-size",
                str(self.budget.eval_batch_size), "--seed", str(r.seed), "--out", str(self.run_dir(r) / "eval")]

    def rollout_args(self, r: Run) -> list[str]:
        return ["--episodes", str(self.budget.rollout_episodes), "--max-steps", str(self.budget.rollout_max_steps),
                "--seed", str(r.seed)]

    def execute(self, r: Run) -> dict[str, Any]:
        d = self.run_dir(r)
        if d.exists():  # half-done: redo from scratch
            shutil.rmtree(d)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        self.runner.train(self.train_args(r), d / "train.log")
        t_train = time.perf_counter() - t0
        self.runner.export(d / "train", d / "export")
        metrics: dict[str, Any] = {}
        if r.evaluate:
            metrics.update(self.runner.evaluate(d / "export", self.eval_args(r), d / "eval.log"))
        if r.rollout:
            ro = self.runner.rollout(d / "export", self.rollout_args(r), d / "rollout.json")
            metrics.update(rollout_metrics(ro))
        record = {"name": r.name, "part": r.part, "group": r.group, "config": r.config, "seed": r.seed,
                  "steps": r.steps, "train_seconds": t_train, "seconds": time.perf_counter() - t0,
                  "metrics": metrics}
        tmp = d / "metrics.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        tmp.replace(d / "metrics.json")
        # the run's checkpoints are not needed once exported
        shutil.rmtree(d / "train" / "checkpoints", ignore_errors=True)
        return record

    def run(self) -> list[dict[str, Any]]:
        validate(self.runs)
        if self.prepare:
            self.prepare_data()
        records = []
        for i, r in enumerate(self.runs, 1):
            if self.is_done(r):
                self.log(f"[{i}/{len(self.runs)}] {r.name}: done already, skipped")
                records.append(json.loads((self.run_dir(r) / "metrics.json").read_text()))
                continue
            self.log(f"[{i}/{len(self.runs)}] {r.name}: {r.config}, {r.steps} steps ...")
            rec = self.execute(r)
            self.log(f"[{i}/{len(self.runs)}] {r.name}: {rec['seconds']:.0f} s (train {rec['train_seconds']:.0f} s) "
                     + ", ".join(f"{k} {rec['metrics'][k]:.4g}" for k in TABLE_METRICS
                                 if isinstance(rec["metrics"].get(k), (int, float))))
            records.append(rec)
        return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lavla.launcher.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", required=True, choices=sorted(BUDGETS))
    p.add_argument("--out", default=None, help="output dir (default runs/study_<budget>); rerun to resume")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the budget's)")
    p.add_argument("--parts", default="a,b,c", help="comma-separated parts among a,b,c (dependencies are added)")
    p.add_argument("--threads", type=int, default=2, help="OMP threads per subprocess")
    a = p.parse_args(argv)
    budget = BUDGETS[a.budget]
    try:
        seeds = tuple(int(s) for s in a.seeds.split(",")) if a.seeds else budget.seeds
        parts = [x.strip() for x in a.parts.split(",") if x.strip()]
        if not seeds or not parts or any(x not in PARTS for x in parts):
            raise ValueError(f"--parts must be among {','.join(PARTS)}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out or f"runs/study_{budget.name}").absolute()
    out.mkdir(parents=True, exist_ok=True)
    runs = select(study_runs(budget, seeds), parts)
    study = Study(budget, runs, out, SubprocessRunner(threads=a.threads))
    t0 = time.perf_counter()
    try:
        records = study.run()
    except (RunFailed, subprocess.TimeoutExpired) as e:
        print(f"error: {e} (rerun the same command to continue)", file=sys.stderr)
        return 1
    header = {"command": "python -m lavla.launcher.study " + " ".join(sys.argv[1:] if argv is None else argv),
              "budget": {**dataclasses.asdict(budget), "seeds": list(seeds)}, "seeds": list(seeds), "parts": parts,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1),
              "run_seconds_total": round(sum(r.get("seconds", 0.0) for r in records), 1)}
    md, js = write_results(out, records, header)
    print(md.read_text())
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
