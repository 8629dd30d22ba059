"""Closed-loop evaluation of an exported policy in the synthetic world or in LIBERO.

    python -m lavla.launcher.rollout --policy EXPORT_DIR [--episodes 50] [--execute-steps 1] [--seed 0]
    lavla-rollout --env libero --suite libero_goal --policy EXPORT_DIR --episodes 50 --videos 3 --out result.json

With ``--env libero`` the episodes walk the suite's tasks and init states (``data_service.envs.libero_env``)
and the policy must have been trained on that suite's dataset (``libero_goal_no_noops``, ...).
``--videos K`` writes the first K episodes' primary camera as mp4 next to ``--out``.

Loads the policy with ``model.policy_io.load_policy`` (no DeepSpeed), runs ``--episodes`` episodes
of ``data_service.envs.sim_env.SyntheticWorldEnv`` (scenes ``seed .. seed + episodes - 1`` of the
held-out ``eval`` stream by default) and prints one JSON object: success rate, mean steps,
per-task and per-instruction success with Wilson 95% intervals, the random floor (uniform actions
over the dataset's normalized range on the same scenes, per task) and every episode's outcome
(``data_service.envs.sim_env.rollout``); a per-task table of both goes to stderr.

Each step, the observation becomes a one-sample batch in the ``data_service.schema`` layout exactly
as the training pipeline builds one (``data_service.sampling.observation.observation_batch``): frames go through the dataset's
codec (the wrist camera is stored as JPEG) and are decoded at ``data.image_size``; the raw proprio is
normalized with the policy's statistics and padded; ``embodiment_id`` comes from the registry entry
and ``dataset_id`` is the dataset's index in the training mixture. The normalized chunk
``predict_action`` returns is unnormalized to raw actions (``unnormalize_action``) and the first
``--execute-steps`` of it are executed before the policy is asked again (LARA executes 1).

The scene generator follows the training config (``data.synthetic``: image size, episode length,
seed), so ``--split train`` replays the dataset's own scenes. Exit code 0 on success, 2 on a bad
policy or argument.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any


from lavla.data_service.envs.policy_runners import PolicyRunner, RandomActionRunner
from lavla.data_service.envs.recording import RecordingEnv

log = logging.getLogger("rollout")


def _fmt_rate(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['successes']}/{r['episodes']} = {r['success_rate']:.0%} [{lo:.0%}, {hi:.0%}]"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Per task family: the policy's success and the random floor, with Wilson 95% intervals."""
    floor = result.get("random_floor") or {}
    lines = [f"{'task':<10} {'policy':<28} random floor"]
    for task, r in result["per_task"].items():
        f = floor.get("per_task", {}).get(task)
        lines.append(f"{task:<10} {_fmt_rate(r):<28} {_fmt_rate(f) if f else '-'}")
    lines.append(f"{'all':<10} {_fmt_rate(result):<28} {_fmt_rate(floor) if floor else '-'}")
    return lines


def make_env(a: argparse.Namespace, policy: Any) -> Any:
    """The env ``--env`` names, configured from the policy's training config and the arguments."""
    if a.env == "libero":
        from lavla.data_service.envs.libero_env import LiberoEnv

        tasks = [int(t) for t in a.libero_tasks.split(",")] if a.libero_tasks else None
        return LiberoEnv(a.suite, tasks=tasks, max_steps=a.max_steps)
    from lavla.data_service.envs.sim_env import SyntheticWorldEnv
    from lavla.data_service.synthetic import WorldOptions

    syn = policy.data_cfg.synthetic
    options = WorldOptions.from_config(syn)
    if a.tasks:
        options = dataclasses.replace(options, tasks=tuple(t.strip() for t in a.tasks.split(",") if t.strip()))
    return SyntheticWorldEnv(image_size=syn.image_size, max_steps=a.max_steps, episode_length=syn.episode_length,
                             split=a.split, world_seed=syn.seed, options=options)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lavla-rollout",
                                description="Closed-loop evaluation of an exported policy in the synthetic world or LIBERO.")
    p.add_argument("--env", default="synthetic", choices=["synthetic", "libero"], help="simulator")
    p.add_argument("--suite", default="libero_goal", help="LIBERO suite (--env libero)")
    p.add_argument("--libero-tasks", default=None, help="comma-separated LIBERO task ids (default: all of the suite)")
    p.add_argument("--videos", type=int, default=0, help="write the first K episodes as mp4 next to --out")
    p.add_argument("--policy", required=True, help="export directory (python -m lavla.launcher.export_policy)")
    p.add_argument("--episodes", type=int, default=50, help="episodes (scenes seed .. seed+episodes-1)")
    p.add_argument("--execute-steps", type=int, default=1,
                   help="actions of each predicted chunk executed before re-planning (LARA: 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="first scene; episode e also seeds the policy's sampling noise with seed + e")
    p.add_argument("--split", default="eval", choices=["eval", "train", "val"],
                   help="scene stream: eval (held out, default), train or val (the dataset's own scenes)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="episode limit (default: 2 x the dataset's episode length)")
    p.add_argument("--num-steps", type=int, default=None, help="flow-matching integration steps (default: the model's)")
    p.add_argument("--device", default="cpu", help="torch device for the policy")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the weights' sha256 check")
    p.add_argument("--tasks", default=None,
                   help="comma-separated task families to draw (default: the policy's training world's)")
    p.add_argument("--no-random-floor", dest="random_floor", action="store_false",
                   help="skip the random-action episodes (same scenes) that give each task's floor")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if a.episodes < 1 or a.execute_steps < 1 or (a.max_steps is not None and a.max_steps < 1):
        print("error: --episodes, --execute-steps and --max-steps must be >= 1", file=sys.stderr)
        return 2

    from lavla.data_service.envs.sim_env import rollout
    from lavla.model.policy_io import PolicyLoadError, load_policy
    from lavla.model.recipe import capabilities_of

    t0 = time.perf_counter()
    try:
        policy = load_policy(a.policy, device=a.device, verify=a.verify)
    except (PolicyLoadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not capabilities_of(policy.module).closed_loop:
        print(f"error: {a.policy} is a {policy.meta.get('recipe', type(policy.module).__name__)} export, which does not "
              "act from observations (capabilities.closed_loop is False): roll out a policy recipe", file=sys.stderr)
        return 2
    try:
        env = make_env(a, policy)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.videos > 0:
        out_dir = Path(a.out).with_suffix("") if a.out else Path("rollout_videos")
        env = RecordingEnv(env, Path(str(out_dir) + "_videos"), a.videos)
    try:
        runner = PolicyRunner(policy, env.dataset_name, image_encodings=dict(env.image_encodings),
                              num_steps=a.num_steps, seed=a.seed)
    except KeyError as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    log.info("rolling out %s (%s) for %d episodes", a.policy, policy.meta.get("recipe", "?"), a.episodes)
    result = rollout(runner, env, a.episodes, a.seed, execute_steps=a.execute_steps)
    floor = None
    if a.random_floor:
        random_result = rollout(RandomActionRunner(policy, env.dataset_name, a.seed), env, a.episodes, a.seed,
                                execute_steps=a.execute_steps)
        floor = {k: random_result[k] for k in ("success_rate", "successes", "episodes", "ci95", "per_task")}
    result = {"policy": str(policy.export_dir), "recipe": policy.meta.get("recipe"), "step": policy.meta.get("step"),
              "dataset": env.dataset_name, "split": a.split, **result, "random_floor": floor,
              "videos": list(getattr(env, "written", [])),
              "policy_seconds_per_call": runner.seconds / max(1, runner.calls),
              "wall_seconds": time.perf_counter() - t0}
    for line in summary_lines(result):
        log.info("%s", line)
    text = json.dumps(result, indent=2)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
