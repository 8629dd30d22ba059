"""Closed-loop evaluation in the synthetic world (``data_service.envs.sim_env``, ``launcher/rollout.py``).

The env must be the generator's world, not a copy of it: replaying a recorded episode's actions
through it reproduces the recorded frames and proprio, and its expert is the generator's scripted
policy (same actions). The success predicates are checked on hand-built states, and the expert /
zero-action policies bound them from both sides.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from lavla.data_service.config import DataConfig, DatasetEntry, SyntheticDataConfig
from lavla.data_service.decode import decode_image
from lavla.data_service.envs.sim_env import (
    LIFT_HEIGHT,
    PLACE_RADIUS,
    PUSH_DISTANCE,
    ROTATE_ANGLE,
    ClosedLoopEnv,
    SyntheticWorldEnv,
    goal_reached,
    rollout,
    wilson_interval,
)
from lavla.data_service.sources import open_source
from lavla.data_service.synthetic import (
    DIRECTIONS,
    PLACES,
    Block,
    Goal,
    Task,
    World,
    episode_rng,
    generate_episode,
    start_episode,
)

from .conftest import TINY


def _run(env: SyntheticWorldEnv, actions) -> list[dict]:
    out = []
    for a in actions:
        obs, _, done, _ = env.step(a)
        out.append(obs)
        if done:
            break
    return out


def _expert_episode(env: SyntheticWorldEnv, seed: int) -> tuple[list[dict], list[np.ndarray], dict]:
    obs, actions = [env.reset(seed)], []
    done, info = False, {}
    while not done:
        a = env.expert_action()
        actions.append(a)
        o, _, done, info = env.step(a)
        obs.append(o)
    return obs, actions, info


# ---------------------------------------------------------------------------------------------
# Determinism and equality with the generator
# ---------------------------------------------------------------------------------------------


def test_deterministic_given_the_seed() -> None:
    a, b = SyntheticWorldEnv(image_size=24), SyntheticWorldEnv(image_size=24)
    obs_a, act_a, info_a = _expert_episode(a, 7)
    obs_b, act_b, info_b = _expert_episode(b, 7)
    assert info_a == info_b and len(obs_a) == len(obs_b)
    np.testing.assert_array_equal(np.stack(act_a), np.stack(act_b))
    for x, y in zip(obs_a, obs_b):
        assert x["language"] == y["language"]
        for k in ("image_primary", "image_wrist", "proprio"):
            np.testing.assert_array_equal(x[k], y[k])
    first = a.reset(7)
    assert first["image_primary"].shape == (3, 24, 24) and first["image_primary"].dtype == np.uint8
    assert first["image_wrist"].shape == (3, 24, 24) and first["proprio"].shape == (8,)
    np.testing.assert_array_equal(first["image_primary"], obs_a[0]["image_primary"])
    # Other seeds are other scenes; reset() without a seed walks on from the constructor's seed.
    assert any(not np.array_equal(a.reset(s)["image_primary"], first["image_primary"]) for s in (8, 9))
    c = SyntheticWorldEnv(image_size=24, seed=7)
    np.testing.assert_array_equal(c.reset()["image_primary"], first["image_primary"])
    np.testing.assert_array_equal(c.reset()["image_primary"], a.reset(8)["image_primary"])
    assert c.seed == 8
    # The eval stream holds scenes no dataset split has.
    tr = SyntheticWorldEnv(image_size=24, split="train")
    assert not np.array_equal(tr.reset(7)["image_primary"], first["image_primary"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_replaying_recorded_actions_reproduces_the_episode(split: str) -> None:
    """Env dynamics and rendering == the generator's: frames, wrist frames, proprio, instruction;
    and the env's expert is the generator's scripted policy (the recorded actions themselves)."""
    seed, length, size = 3, 16, 32
    for index in range(4):
        ep = generate_episode(seed, split, index, length, size)
        env = SyntheticWorldEnv(image_size=size, max_steps=1000, episode_length=length, split=split,
                                world_seed=seed, terminate_on_success=False)
        obs = env.reset(index)
        assert obs["language"] == ep.instruction and env.recorded_length == len(ep.actions)
        for t, action in enumerate(ep.actions):
            np.testing.assert_array_equal(obs["image_primary"], ep.images[t].transpose(2, 0, 1), err_msg=f"{index}/{t}")
            np.testing.assert_array_equal(obs["image_wrist"], ep.wrist_images[t].transpose(2, 0, 1))
            np.testing.assert_array_equal(obs["proprio"], ep.states[t])
            np.testing.assert_array_equal(env.expert_action(), action)
            obs, _, done, _ = env.step(action)
            assert not done


def test_replay_matches_the_rlds_files(synthetic_dir: Path) -> None:
    """Through the written dataset: decoded PNG frames and proprio of every step of every train
    episode equal the env's after replaying the stored actions."""
    cfg = DataConfig(datasets=[DatasetEntry(path=str(synthetic_dir))], image_size=TINY["image_size"])
    source = open_source(cfg.datasets[0], cfg)
    env = SyntheticWorldEnv(image_size=TINY["image_size"], max_steps=1000, episode_length=TINY["episode_length"],
                            split="train", world_seed=TINY["seed"], terminate_on_success=False)
    for i in range(source.num_episodes):
        ep = source.read_episode(i)
        obs = env.reset(i)
        assert obs["language"] == ep.language
        for t in range(ep.length):
            np.testing.assert_array_equal(obs["image_primary"], decode_image(ep.image_primary[t], TINY["image_size"]))
            np.testing.assert_array_equal(obs["proprio"], ep.proprio[t])
            obs, *_ = env.step(ep.action[t])


# ---------------------------------------------------------------------------------------------
# Success predicates
# ---------------------------------------------------------------------------------------------


def _world(*blocks: tuple[str, tuple[float, float]], pose=(0.0, 0.0, 0.5, 0.0, 0.0, 0.0)) -> World:
    return World(np.array(pose, float), 1.0, [Block(c, np.array(p, float)) for c, p in blocks])


def _check(goal: Goal, world: World, start: World | None = None, yaw: float = 0.0) -> bool:
    return goal_reached(Task("-", [], goal), world, start if start is not None else world, yaw)


def test_pick_predicate() -> None:
    g = Goal("pick", block="red")
    w = _world(("red", (0.2, 0.2)), ("blue", (-0.3, 0.1)))
    assert not _check(g, w)
    w.held, w.blocks[0].z = 0, LIFT_HEIGHT + 0.01
    assert _check(g, w)
    w.blocks[0].z = LIFT_HEIGHT - 0.05  # grasped but barely lifted
    assert not _check(g, w)
    w.held, w.blocks[0].z, w.blocks[1].z = 1, 0.0, 0.5  # the wrong block lifted
    assert not _check(g, w)


def test_place_predicate() -> None:
    g = Goal("place", block="green", place="top left")
    target = np.array(PLACES["top left"])
    w = _world(("green", tuple(target + [PLACE_RADIUS * 0.7, 0.0])), ("red", (0.0, 0.0)))
    assert _check(g, w)
    w.held = 0  # still in the gripper: not put down
    assert not _check(g, w)
    w.held, w.blocks[0].z = None, 0.3
    assert not _check(g, w)
    w.blocks[0].z, w.blocks[0].pos = 0.0, target + [PLACE_RADIUS * 1.2, 0.0]
    assert not _check(g, w)
    assert not _check(Goal("place", block="red", place="top left"), _world(("red", (0.6, -0.6))))
    assert _check(Goal("place", block="red", place="center"), _world(("red", (0.05, -0.1))))


def test_push_predicate() -> None:
    g = Goal("push", block="blue", direction="left")
    start = _world(("blue", (0.2, 0.0)), ("red", (-0.5, 0.5)))
    assert not _check(g, start, start)

    def moved(dx: float, dy: float, **kw) -> World:
        w = _world(("blue", (0.2 + dx, dy)), ("red", (-0.5, 0.5)))
        for k, v in kw.items():
            setattr(w, k, v)
        return w

    assert _check(g, moved(-PUSH_DISTANCE - 0.01, 0.05), start)
    assert not _check(g, moved(-PUSH_DISTANCE + 0.03, 0.0), start)  # not far enough
    assert not _check(g, moved(+0.4, 0.0), start)  # the wrong way
    assert not _check(g, moved(-0.2, 0.3), start)  # mostly sideways
    assert not _check(g, moved(-0.3, 0.0, held=0), start)  # carried, not pushed
    assert _check(Goal("push", block="blue", direction="forward"), moved(0.0, 0.25), start)  # forward = +y
    assert _check(Goal("push", block="blue", direction="backward"), moved(0.02, -0.25), start)
    assert _check(Goal("push", block="blue", direction="right"), moved(0.25, 0.0), start)


def test_move_and_rotate_predicates() -> None:
    g = Goal("move", place="bottom right")
    w = _world(pose=(0.5, -0.55, 0.9, 0.0, 0.0, 0.0))
    assert _check(g, w)
    w.pose[:2] = PLACES["bottom right"][0] - PLACE_RADIUS - 0.01, PLACES["bottom right"][1]
    assert not _check(g, w)
    assert not _check(Goal("move", place="center"), w)
    ccw, cw = Goal("rotate", turn=1.0), Goal("rotate", turn=-1.0)
    assert _check(ccw, w, yaw=ROTATE_ANGLE + 0.01) and not _check(cw, w, yaw=ROTATE_ANGLE + 0.01)
    assert _check(cw, w, yaw=-ROTATE_ANGLE - 0.01) and not _check(ccw, w, yaw=0.3)


def test_rotation_is_counted_across_the_yaw_wrap() -> None:
    """The env sums applied yaw deltas: turning through +-pi (where the pose's yaw wraps) counts."""
    env = SyntheticWorldEnv(image_size=16)
    for seed in range(200):
        env.reset(seed)
        if env.task_kind == "rotate":
            break
    else:
        pytest.fail("no rotate task in 200 scenes")
    turn = env.task.goal.turn
    env.world.pose[5] = turn * (np.pi - 0.1)  # about to wrap in the instructed sense
    a = np.zeros(7, np.float32)
    a[6], a[5] = 1.0, turn * 0.3
    need = math.ceil(ROTATE_ANGLE / 0.3)
    for step in range(1, need):
        _, reward, done, info = env.step(a)
        assert not done and not info["success"] and reward == 0.0
        if step == 1:
            assert np.sign(env.world.pose[5]) == -turn  # wrapped around
    _, reward, done, info = env.step(a)
    assert done and info["success"] and reward == 1.0 and not info["truncated"] and info["steps"] == need


def test_goals_match_their_instructions() -> None:
    """Every generated task carries a goal that says what its instruction says."""
    kinds = set()
    for i in range(300):
        _, world, task, _ = start_episode(episode_rng(0, "eval", i), 40)
        g, text = task.goal, task.instruction
        kinds.add(g.kind)
        if g.block is not None:
            assert f"the {g.block} block" in text and g.block in [b.color for b in world.blocks]
        if g.kind == "pick":
            assert text.startswith("pick up")
        elif g.kind == "place":
            assert text.startswith("put") and text.endswith(f"in the {g.place}")
        elif g.kind == "push":
            assert text.startswith("push") and text.endswith(g.direction) and g.direction in DIRECTIONS
        elif g.kind == "move":
            assert text == f"move the gripper to the {g.place}"
        else:
            assert text == f"rotate the gripper {'counterclockwise' if g.turn > 0 else 'clockwise'}"
    assert kinds == {"pick", "place", "push", "move", "rotate"}


# ---------------------------------------------------------------------------------------------
# Expert vs zero policy, rollout aggregation
# ---------------------------------------------------------------------------------------------


def test_expert_succeeds_and_zero_action_does_not() -> None:
    env = SyntheticWorldEnv(image_size=16)
    expert = rollout(lambda obs: env.expert_action(), env, episodes=20, seed=0)
    zero = rollout(lambda obs: np.zeros((4, 7), np.float32), SyntheticWorldEnv(image_size=16), episodes=20, seed=0,
                   execute_steps=4)
    assert expert["success_rate"] >= 0.9, expert["per_task"]
    assert zero["success_rate"] <= 0.1, zero["per_task"]
    assert expert["mean_steps"] < env.max_steps and zero["mean_steps"] > 0.9 * env.max_steps
    assert len(expert["per_task"]) >= 4  # the 20 scenes cover the instruction kinds
    # Same scenes in both runs, in the same order.
    assert [r["instruction"] for r in expert["episode_results"]] == [r["instruction"] for r in zero["episode_results"]]


class _FakeEnv:
    """Seed s: succeeds on step s % 3 + 1 when s is even, else runs into max_steps; task 'even'/'odd'."""

    dataset_name = "fake"
    max_steps = 5
    image_encodings: Mapping[str, str] = {"image_primary": "png"}

    def __init__(self) -> None:
        self.actions: list[np.ndarray] = []

    def reset(self, seed=None):
        self.seed, self.t = seed, 0
        return {"image_primary": np.zeros((3, 4, 4), np.uint8), "proprio": np.zeros(2, np.float32),
                "language": f"task {seed % 4}"}

    def success(self) -> bool:
        return self.seed % 2 == 0 and self.t >= self.seed % 3 + 1

    def step(self, action):
        self.actions.append(np.asarray(action))
        self.t += 1
        ok = self.success()
        done = ok or self.t >= self.max_steps
        obs = {"image_primary": np.zeros((3, 4, 4), np.uint8), "proprio": np.zeros(2, np.float32), "t": self.t,
               "language": f"task {self.seed % 4}"}
        return obs, float(ok), done, {"success": ok, "task": "even" if self.seed % 2 == 0 else "odd"}


def test_rollout_aggregates() -> None:
    env = _FakeEnv()
    assert isinstance(env, ClosedLoopEnv) and isinstance(SyntheticWorldEnv(), ClosedLoopEnv)
    resets, calls = [], []

    class Policy:
        def reset(self, seed):
            resets.append(seed)

        def __call__(self, obs):
            calls.append(obs.get("t", 0))
            return np.arange(3 * 7, dtype=np.float32).reshape(3, 7) + 100 * len(calls)

    res = rollout(Policy(), env, episodes=6, seed=10, execute_steps=2)
    assert resets == list(range(10, 16))
    # seeds 10..15: even ones succeed after 2, 3, 1 steps (10 % 3 + 1 = 2, 12 -> 1, 14 -> 3); odd ones take 5.
    steps = {10: 2, 11: 5, 12: 1, 13: 5, 14: 3, 15: 5}
    assert [r["steps"] for r in res["episode_results"]] == list(steps.values())
    assert [r["success"] for r in res["episode_results"]] == [True, False] * 3
    assert res["successes"] == 3 and res["success_rate"] == 0.5 and res["episodes"] == 6
    assert res["mean_steps"] == pytest.approx(np.mean(list(steps.values())))
    assert res["mean_steps_success"] == pytest.approx(2.0)
    def rate(n: int, ok: int) -> dict:
        return {"episodes": n, "successes": ok, "success_rate": ok / n, "ci95": list(wilson_interval(ok, n))}

    assert res["per_task"] == {"even": rate(3, 3), "odd": rate(3, 0)}
    assert res["ci95"] == list(wilson_interval(3, 6))
    # Instructions "task 2", "task 3", "task 0", "task 1", "task 2", "task 3" (seed % 4).
    assert res["per_instruction"]["task 2"] == rate(2, 2)
    assert res["per_instruction"]["task 1"] == rate(1, 0)
    assert res["per_instruction"]["task 3"] == rate(2, 0)
    # Two actions of each 3-step chunk are executed, then the policy is asked again.
    per_ep = [math.ceil(s / 2) for s in steps.values()]
    assert [r["policy_calls"] for r in res["episode_results"]] == per_ep and res["policy_calls"] == sum(per_ep)
    first = np.arange(21, dtype=np.float32).reshape(3, 7)
    np.testing.assert_array_equal(env.actions[0], first[0] + 100)
    np.testing.assert_array_equal(env.actions[1], first[1] + 100)
    np.testing.assert_array_equal(env.actions[2], first[0] + 200)  # seed 11 starts with call 2
    assert json.loads(json.dumps(res)) == res  # the CLI prints it as JSON

    one = rollout(lambda obs: np.ones(7, np.float32), _FakeEnv(), episodes=2, seed=0)  # a bare action is a chunk of 1
    assert one["policy_calls"] == 1 + 5 and one["execute_steps"] == 1
    with pytest.raises(ValueError, match="execute_steps"):
        rollout(lambda obs: np.ones(7), _FakeEnv(), episodes=1, execute_steps=0)


def test_wilson_interval() -> None:
    """Known values (Wilson 1927; e.g. Newcombe 1998, table I): 0/50, 25/50, 50/50, 37/50."""
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and hi == pytest.approx(0.0713, abs=1e-4)
    lo, hi = wilson_interval(25, 50)
    assert (lo, hi) == (pytest.approx(0.3664, abs=1e-4), pytest.approx(0.6336, abs=1e-4))
    assert wilson_interval(50, 50) == (pytest.approx(0.9287, abs=1e-4), 1.0)
    lo, hi = wilson_interval(37, 50)
    assert lo < 0.74 < hi and hi - lo < 0.26
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_step_contract() -> None:
    env = SyntheticWorldEnv(image_size=16, max_steps=3)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(7))
    env.reset(0)
    with pytest.raises(ValueError, match="7 values"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="not finite"):
        env.step(np.full(7, np.nan))
    env.step(np.zeros((1, 7)))  # a chunk of one is accepted
    _, _, done, info = env.step(np.zeros(7))
    assert not done and info["steps"] == 2
    _, reward, done, info = env.step(np.zeros(7))
    assert done and info["truncated"] and not info["success"] and reward == 0.0
    with pytest.raises(RuntimeError, match="over"):
        env.step(np.zeros(7))


# ---------------------------------------------------------------------------------------------
# Policy side: observation -> batch as in training, and the CLI on a tiny export
# ---------------------------------------------------------------------------------------------


def test_observation_batch_matches_the_training_pipeline(synthetic_dir: Path) -> None:
    """A batch built from the env's observation equals the pipeline's training sample of the same
    step: frames through the dataset's codecs (JPEG wrist) and resize, normalized proprio, masks, ids."""
    import torch

    from lavla.data_service.stats import Normalizer
    from lavla.data_service.sampling.windowing import make_sample
    from lavla.data_service.sampling.observation import observation_batch
    from lavla.model.policy_io import LoadedPolicy

    cfg = DataConfig(datasets=[DatasetEntry(path=str(synthetic_dir))], image_size=40, action_horizon=4)
    source = open_source(cfg.datasets[0], cfg)
    stats = source.statistics()
    policy = LoadedPolicy(module=torch.nn.Identity(), model_cfg=None, data_cfg=cfg,
                          stats={"synthetic_world": stats.to_dict()})
    normalizer = Normalizer(stats, cfg.normalization, source.spec.action_absolute_mask)
    env = SyntheticWorldEnv(image_size=TINY["image_size"], max_steps=1000, split="train", world_seed=TINY["seed"],
                            episode_length=TINY["episode_length"], terminate_on_success=False)
    for i in (0, 3):
        ep = source.read_episode(i)
        obs = env.reset(i)
        for t in range(ep.length):
            if t in (0, ep.length // 2):
                want = make_sample(ep, t, source, normalizer, cfg)
                got = observation_batch(obs, policy, "synthetic_world", image_encodings=dict(env.image_encodings))
                for k in ("image_primary", "image_wrist", "has_wrist", "proprio", "proprio_dim_mask", "action_dim_mask",
                          "has_action", "embodiment_id"):
                    np.testing.assert_array_equal(got[k][0].numpy(), want[k], err_msg=k)
                assert got["dataset_id"].item() == 0 and got["language"] == [want["language"]]
                assert got["action"].shape == (1, 4, 7) and got["image_future"].shape == (1, 3, 40, 40)
            obs, *_ = env.step(ep.action[t])


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """A policy export with random weights (the quickstart's LARA shape), built without training:
    what ``load_policy`` reads, written directly."""
    import hashlib

    import torch

    from lavla.data_service.datasets.registry import get_spec
    from lavla.data_service.synthetic import generate_synthetic_world
    from lavla.model.factory import build_model
    from lavla.model.policy_io import EXPORT_FORMAT, EXPORT_FORMAT_VERSION
    from lavla.trainer.config_io import dump_config, load_config
    from lavla.trainer.export import save_state_dict

    root = tmp_path_factory.mktemp("rollout_data")
    syn = {"train_episodes": 4, "val_episodes": 0, "episode_length": 10, "image_size": 32, "seed": 5}
    ds_dir = generate_synthetic_world(SyntheticDataConfig(enabled=True, root=str(root), **syn))
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(["--config", str(repo / "configs" / "quickstart.yaml"),
                       *(f"--data.synthetic.{k}={v}" for k, v in syn.items()), f"--data.synthetic.root={root}",
                       f"--data.datasets=[{{name: synthetic_world, path: {ds_dir}, split: train, weight: 1.0}}]"])
    stats = open_source(cfg.data.datasets[0], cfg.data).statistics().to_dict()
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data)
    out = tmp_path_factory.mktemp("export") / "policy"
    out.mkdir()
    save_state_dict(model.state_dict(), out)
    (out / "config.yaml").write_text(dump_config(cfg))
    (out / "normalization_stats.json").write_text(json.dumps({"synthetic_world": stats}))
    spec = get_spec("synthetic_world")
    weights = (out / "model.safetensors").read_bytes()
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "recipe": "lara", "step": 0,
            "weights": {"file": "model.safetensors", "sha256": hashlib.sha256(weights).hexdigest(),
                        "size_bytes": len(weights)},
            "asset_paths": [],
            "normalization": {"mode": cfg.data.normalization, "datasets": {"synthetic_world": {
                "action_absolute_mask": list(spec.action_absolute_mask), "action_dim": spec.action_dim,
                "embodiment_id": spec.embodiment_id, "is_video": False}}}}
    (out / "export.json").write_text(json.dumps(meta))
    return out


def _cli(*args: str) -> tuple[int, dict | None]:
    from lavla.launcher.rollout import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(list(args))
    return rc, (json.loads(buf.getvalue()) if rc == 0 else None)


def test_cli_on_a_tiny_export(tiny_export: Path, tmp_path: Path) -> None:
    from lavla.data_service.envs.policy_runners import PolicyRunner
    from lavla.model.policy_io import load_policy

    args = ["--policy", str(tiny_export), "--episodes", "2", "--max-steps", "3", "--execute-steps", "2", "--seed", "4",
            "--num-steps", "2"]
    rc, res = _cli(*args, "--out", str(tmp_path / "r.json"))
    assert rc == 0 and res["episodes"] == 2 and res["dataset"] == "synthetic_world" and res["split"] == "eval"
    assert json.loads((tmp_path / "r.json").read_text()) == res
    assert res["max_steps"] == 3 and 0.0 <= res["success_rate"] <= 1.0
    assert [r["seed"] for r in res["episode_results"]] == [4, 5]
    assert res["policy_calls"] == sum(math.ceil(r["steps"] / 2) for r in res["episode_results"])
    # The scenes are the env's (the export's synthetic config: 32 px, episode length 10, seed 5).
    env = SyntheticWorldEnv(image_size=32, episode_length=10, world_seed=5)
    assert [r["instruction"] for r in res["episode_results"]] == [env.reset(s)["language"] for s in (4, 5)]
    # Deterministic: the same command gives the same episodes.
    assert _cli(*args)[1]["episode_results"] == res["episode_results"]

    # The runner returns raw actions: the unnormalized chunk of the policy's prediction.
    policy = load_policy(tiny_export)
    runner = PolicyRunner(policy, "synthetic_world", image_encodings=dict(env.image_encodings), num_steps=2, seed=1)
    obs = env.reset(0)
    chunk = runner(obs)
    assert chunk.shape == (policy.data_cfg.action_horizon, 7) and chunk.dtype == np.float32
    runner.reset(1)
    np.testing.assert_array_equal(runner(obs), chunk)
    stats = policy.stats["synthetic_world"]["action"]
    lo, hi = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    assert (chunk[:, :6] >= lo[:6] - 1e-5).all() and (chunk[:, :6] <= hi[:6] + 1e-5).all()

    rc, _ = _cli("--policy", str(tmp_path / "missing"))
    assert rc == 2
