"""Closed-loop evaluation in the synthetic world: an environment on the generator's own physics and
renderer, per-instruction success predicates, a scripted expert, and :func:`rollout`.

:class:`SyntheticWorldEnv` draws its scenes and tasks exactly as ``data_service.synthetic`` draws
the episodes it records (``start_episode`` on ``episode_rng``), steps them with ``World.step`` and
renders them with ``render_top``/``render_wrist``: nothing is re-implemented here, so a policy
trained on the dataset is evaluated in the very world that produced it. ``reset(i)`` with
``split="train"`` and the dataset's ``seed``/``episode_length`` starts train episode ``i`` itself
(the tests replay recorded actions through the env and get the recorded frames back); the default
``split="eval"`` uses the generator's third RNG stream, scenes no dataset split contains.

Success (:meth:`SyntheticWorldEnv.success`) is what each instruction template of the generator
means, judged on the world state (and, for push and rotate, on the episode's start):

================================  ===============================================================
instruction                       success
================================  ===============================================================
pick up the X block               block X is in the gripper, lifted: its bottom at z >= 0.2
                                  (``LIFT_HEIGHT``; the expert carries it to z ~0.66)
put the X block in the P          block X rests on the table (released, z = 0) with its centre
                                  within 0.2 (``PLACE_RADIUS``, ~2 block half-widths) of place P
push the X block D                block X is on the table (not held) and its centre has moved
                                  >= 0.15 (``PUSH_DISTANCE``) along direction D since the start,
                                  at most 45 degrees off D (sideways drift <= the progress along D)
move the gripper to the P         the wrist is within 0.2 (``PLACE_RADIUS``) of place P in x/y
                                  (the instruction names no height)
rotate the gripper (counter)cw    the gripper has turned a quarter turn (``ROTATE_ANGLE``, pi/2;
                                  the expert turns 2.4 rad) in the instructed sense since the
                                  start, summing the applied yaw deltas (no wrap-around)
================================  ===============================================================

Places are ``synthetic.PLACES`` (corners at +-0.6, the centre), directions ``synthetic.DIRECTIONS``
(left/right = -x/+x, forward/backward = +y/-y); the table spans [-1, 1]^2.

:class:`ClosedLoopEnv` is the small interface :func:`rollout` (and ``launcher/rollout.py``) needs,
so another simulator (e.g. a LIBERO adapter) can plug in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lavla.data_service.synthetic import (
    DIRECTIONS,
    NAME,
    PLACES,
    PRIMARY_ENCODING,
    WRIST_ENCODING,
    Block,
    ScriptedPolicy,
    Task,
    World,
    WorldOptions,
    episode_rng,
    recorded_length,
    render_top,
    render_wrist,
    start_episode,
)

__all__ = [
    "LIFT_HEIGHT",
    "PLACE_RADIUS",
    "PUSH_DISTANCE",
    "ROTATE_ANGLE",
    "ClosedLoopEnv",
    "Observation",
    "SyntheticWorldEnv",
    "goal_reached",
    "rollout",
    "wilson_interval",
]

LIFT_HEIGHT = 0.2
"""pick: minimum height of the held block's bottom (the gripper grasps below z 0.12 and lifts)."""
PLACE_RADIUS = 0.2
"""place / move: distance from the named place (block centre or wrist, x/y) that counts as there."""
PUSH_DISTANCE = 0.15
"""push: minimum progress of the block's centre along the instructed direction."""
ROTATE_ANGLE = float(np.pi / 2)
"""rotate: minimum turn (radians) in the instructed sense: a quarter turn."""

Observation = dict[str, Any]
"""``image_primary`` uint8 [3,H,W], ``image_wrist`` uint8 [3,H,W] (optional), ``proprio`` float32
[P] raw (the dataset's units), ``language`` str."""


@runtime_checkable
class ClosedLoopEnv(Protocol):
    """What :func:`rollout` and ``launcher/rollout.py`` need from a simulator.

    ``step`` takes one *raw* action (the dataset's units, as recorded in its RLDS ``steps/action``)
    and returns ``(obs, reward, done, info)``; ``info["success"]`` is the success predicate after
    the step and ``info["task"]`` (optional) a task category for per-category rates.
    """

    dataset_name: str
    """Registry name of the dataset whose statistics, embodiment and action units the env uses."""
    max_steps: int
    """Steps after which an episode ends unsuccessful."""
    image_encodings: Mapping[str, str]
    """Observation image key -> how the dataset stored that camera (``png``/``jpeg``), so a policy
    can be shown frames with the same compression artefacts as in training."""

    def reset(self, seed: int | None = None) -> Observation: ...

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, dict[str, Any]]: ...

    def success(self) -> bool: ...


def _block(world: World, color: str) -> tuple[int, Block]:
    for i, b in enumerate(world.blocks):
        if b.color == color:
            return i, b
    raise KeyError(f"no {color} block in the scene")


def goal_reached(task: Task, world: World, start: World, yaw_turned: float) -> bool:
    """The success predicate of ``task`` (table in the module doc) on ``world``; ``start`` is the
    scene at reset, ``yaw_turned`` the sum of the yaw deltas applied since then."""
    goal = task.goal
    if goal is None:
        raise ValueError(f"task {task.instruction!r} carries no goal")
    if goal.kind == "pick":
        _, b = _block(world, goal.block)
        return b.z >= LIFT_HEIGHT
    if goal.kind == "place":
        i, b = _block(world, goal.block)
        return (world.held != i and b.z == 0.0
                and float(np.linalg.norm(b.pos - np.asarray(PLACES[goal.place]))) <= PLACE_RADIUS)
    if goal.kind == "push":
        i, b = _block(world, goal.block)
        if world.held == i or b.z != 0.0:
            return False
        d = np.asarray(DIRECTIONS[goal.direction])
        moved = b.pos - _block(start, goal.block)[1].pos
        along = float(moved @ d)
        across = abs(float(moved[0] * d[1] - moved[1] * d[0]))
        return along >= PUSH_DISTANCE and across <= along
    if goal.kind == "move":
        return float(np.linalg.norm(world.pose[:2] - np.asarray(PLACES[goal.place]))) <= PLACE_RADIUS
    if goal.kind == "rotate":
        return goal.turn * yaw_turned >= ROTATE_ANGLE
    raise ValueError(f"unknown goal kind {goal.kind!r}")


def _copy_world(w: World) -> World:
    return World(w.pose.copy(), w.grip, [Block(b.color, b.pos.copy(), b.z, b.angle) for b in w.blocks], w.held)


class SyntheticWorldEnv:
    """The synthetic world as a closed-loop environment (implements :class:`ClosedLoopEnv`).

    Args:
        image_size: side of the rendered frames (the dataset's ``synthetic.image_size``).
        max_steps: episode limit; default ``2 * episode_length`` (the expert needs at most ~1.1x).
        seed: scene of the first ``reset()`` called without a seed; later ones take the next
            scenes (seed + 1, ...). Default 0.
        episode_length: the generator's ``episode_length``. It sets the scripted expert's speed
            (as in the dataset, the task fits ~75% of a recorded episode), not the limit.
        split: RNG stream of the scenes: ``eval`` (default; no dataset split draws from it),
            ``train`` or ``val`` to start the dataset's own episodes.
        world_seed: the generator's ``seed`` (the dataset's ``synthetic.seed``).
        terminate_on_success: end the episode when the goal is reached (else only at ``max_steps``).
        wrist: render the wrist camera into ``obs["image_wrist"]``.
        options: the generator's task families and expert options (``WorldOptions.from_config`` of
            the dataset's ``synthetic`` config), so the env draws the tasks the policy trained on.

    The episode is a pure function of ``(world_seed, split, seed)`` and the actions taken.
    """

    dataset_name = NAME
    action_dim = 7
    image_encodings: Mapping[str, str] = {"image_primary": PRIMARY_ENCODING, "image_wrist": WRIST_ENCODING}

    def __init__(self, image_size: int = 64, max_steps: int | None = None, seed: int | None = None, *,
                 episode_length: int = 40, split: str = "eval", world_seed: int = 0,
                 terminate_on_success: bool = True, wrist: bool = True,
                 options: WorldOptions | None = None) -> None:
        if image_size < 1 or episode_length < 1:
            raise ValueError(f"image_size and episode_length must be >= 1, got {image_size}, {episode_length}")
        self.image_size, self.episode_length = int(image_size), int(episode_length)
        self.max_steps = int(max_steps) if max_steps is not None else 2 * self.episode_length
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self.split, self.world_seed = split, int(world_seed)
        self.terminate_on_success, self.wrist = terminate_on_success, wrist
        self.options = options or WorldOptions()
        self._next_seed = 0 if seed is None else int(seed)
        self.seed: int | None = None
        self.world: World | None = None
        self.task: Task | None = None
        self.recorded_length = 0
        """T the generator would record for this scene (the expert is paced to finish in ~0.75 T)."""
        self.steps = 0
        self._start: World | None = None
        self._expert: ScriptedPolicy | None = None
        self._yaw_turned = 0.0
        self._done = True
        self._succeeded = False

    # -- episode ----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> Observation:
        """Start scene ``seed`` (the next one after the last reset when None); returns the first obs."""
        if seed is None:
            seed = self._next_seed
        self.seed, self._next_seed = int(seed), int(seed) + 1
        _, world, task, expert = start_episode(episode_rng(self.world_seed, self.split, self.seed), self.episode_length,
                                               self.options)
        self.recorded_length = recorded_length(self.world_seed, self.split, self.seed, self.episode_length, self.options)
        self.world, self.task, self._expert = world, task, expert
        self._start = _copy_world(world)
        self.steps, self._yaw_turned, self._done, self._succeeded = 0, 0.0, False, False
        return self.observation()

    def step(self, action: np.ndarray) -> tuple[Observation, float, bool, dict[str, Any]]:
        """Apply one raw 7-D action ``(dx, dy, dz, droll, dpitch, dyaw, gripper)`` (gripper absolute,
        1 = open) exactly as the generator applies its recorded actions (float32, ``World.step``).

        Returns ``(obs, reward, done, info)``: reward 1.0 on the step that first reaches the goal,
        else 0.0; ``done`` on success (``terminate_on_success``) or after ``max_steps`` steps;
        ``info``: ``success``, ``steps``, ``instruction``, ``task`` (the goal kind), ``truncated``."""
        if self.world is None or self._done:
            raise RuntimeError("the episode is over (or never started); call reset()")
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (self.action_dim,):
            a = a.reshape(-1)
            if a.shape != (self.action_dim,):
                raise ValueError(f"action must have {self.action_dim} values, got shape {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"action is not finite: {a.tolist()}")
        self.world.step(a)
        self.steps += 1
        self._yaw_turned += float(a[5])  # World.step wraps yaw; the sum of deltas is the real turn
        success = self.success()
        reward = 1.0 if success and not self._succeeded else 0.0
        self._succeeded |= success
        truncated = self.steps >= self.max_steps and not (success and self.terminate_on_success)
        self._done = (success and self.terminate_on_success) or self.steps >= self.max_steps
        info = {"success": success, "steps": self.steps, "instruction": self.instruction, "task": self.task_kind,
                "truncated": truncated}
        return self.observation(), reward, self._done, info

    def success(self) -> bool:
        """Whether the current state satisfies the instruction (see the module doc)."""
        if self.world is None or self.task is None or self._start is None:
            raise RuntimeError("call reset() first")
        return goal_reached(self.task, self.world, self._start, self._yaw_turned)

    def expert_action(self) -> np.ndarray:
        """The generator's scripted policy for this scene: float32 [7], the action it would record
        now. Stateful (it tracks its waypoints and draws its noise from the episode's stream): call it
        at most once per step. From a reset on the ``train`` split, stepping its actions reproduces
        the recorded episode exactly."""
        if self._expert is None or self.world is None:
            raise RuntimeError("call reset() first")
        return self._expert(self.world)

    # -- views ------------------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return self.task.instruction if self.task is not None else ""

    @property
    def task_kind(self) -> str:
        return self.task.goal.kind if self.task is not None and self.task.goal is not None else ""

    @property
    def done(self) -> bool:
        return self._done

    def observation(self) -> Observation:
        """The current observation (renders the cameras)."""
        if self.world is None:
            raise RuntimeError("call reset() first")
        obs: Observation = {
            "image_primary": np.ascontiguousarray(render_top(self.world, self.image_size).transpose(2, 0, 1)),
            "proprio": self.world.proprio(),
            "language": self.instruction,
        }
        if self.wrist:
            obs["image_wrist"] = np.ascontiguousarray(render_wrist(self.world, self.image_size).transpose(2, 0, 1))
        return obs


# ---------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------

PolicyFn = Callable[[Observation], np.ndarray]
"""obs -> raw action chunk [N, A] (or one action [A]) in the env's units."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (95% for z = 1.96). Unlike the normal approximation it
    stays inside [0, 1] and is honest at 0/n and n/n: 0/50 gives [0, 0.071], not [0, 0]."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _rate(records: list[dict[str, Any]]) -> dict[str, Any]:
    n, ok = len(records), sum(r["success"] for r in records)
    return {"episodes": n, "successes": ok, "success_rate": ok / n if n else 0.0, "ci95": list(wilson_interval(ok, n))}


def rollout(policy_fn: PolicyFn, env: ClosedLoopEnv, episodes: int, seed: int = 0, *,
            execute_steps: int = 1) -> dict[str, Any]:
    """Run ``episodes`` closed-loop episodes (scenes ``seed``, ``seed + 1``, ...).

    The policy is queried for a chunk, the first ``execute_steps`` actions of it are executed
    (fewer if the chunk is shorter or the episode ends), then it is queried again on the new
    observation; LARA executes 1 step of each chunk. A ``policy_fn`` with a ``reset(seed)`` method
    has it called at the start of every episode.

    Returns ``success_rate``, ``successes``, ``ci95`` (Wilson 95% interval), ``mean_steps`` (over all episodes; a failure counts
    ``max_steps``), ``mean_steps_success`` (None without successes), ``policy_calls``,
    ``per_task`` and ``per_instruction`` (``episodes``/``successes``/``success_rate``/``ci95`` each) and
    ``episode_results`` (seed, instruction, task, success, steps, policy_calls per episode).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if execute_steps < 1:
        raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
    records: list[dict[str, Any]] = []
    for e in range(episodes):
        s = seed + e
        obs = env.reset(s)
        reset = getattr(policy_fn, "reset", None)
        if callable(reset):
            reset(s)
        done, steps, calls = False, 0, 0
        info: dict[str, Any] = {"success": False}
        instruction = str(obs.get("language", ""))
        while not done:
            chunk = np.asarray(policy_fn(obs), dtype=np.float32)
            calls += 1
            if chunk.ndim == 1:
                chunk = chunk[None]
            if chunk.ndim != 2 or chunk.shape[0] < 1:
                raise ValueError(f"policy returned an action chunk of shape {chunk.shape}; expected [N, A]")
            for action in chunk[:execute_steps]:
                obs, _, done, info = env.step(action)
                steps += 1
                if done:
                    break
        records.append({"seed": s, "instruction": instruction, "task": str(info.get("task") or instruction),
                        "success": bool(info["success"]), "steps": steps, "policy_calls": calls})
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_instruction: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
        by_instruction[r["instruction"]].append(r)
    ok_steps = [r["steps"] for r in records if r["success"]]
    return {
        "episodes": episodes,
        "seed": seed,
        "execute_steps": execute_steps,
        "max_steps": int(env.max_steps),
        **{k: v for k, v in _rate(records).items() if k != "episodes"},
        "mean_steps": float(np.mean([r["steps"] for r in records])),
        "mean_steps_success": float(np.mean(ok_steps)) if ok_steps else None,
        "policy_calls": sum(r["policy_calls"] for r in records),
        "per_task": {k: _rate(v) for k, v in sorted(by_task.items())},
        "per_instruction": {k: _rate(v) for k, v in sorted(by_instruction.items())},
        "episode_results": records,
    }
