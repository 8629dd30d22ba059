"""Tasks, the scripted expert and whole episodes of the synthetic world (one RNG stream per episode)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lavla.data_service.config import SyntheticDataConfig
from lavla.data_service.formats.rlds_writer import encode_image
from lavla.data_service.synthetic.render import render_human, render_top, render_wrist
from lavla.data_service.synthetic.world import Block, COLORS, DIRECTIONS, NAME, PLACES, World


@dataclass
class Waypoint:
    """A target the scripted policy moves to."""

    pos: np.ndarray
    """[x, y, z] target of the wrist."""
    grip: float
    """Commanded gripper (1 = open) while moving there."""
    yaw: float | None = None
    """Target yaw, or None to keep the current one."""
    hold: int = 0
    """Extra steps to stay once reached (e.g. to close the gripper)."""


@dataclass
class Goal:
    """What an instruction asks for, in structured form (``data_service.envs.sim_env`` judges success on it)."""

    kind: str
    """``pick`` | ``place`` | ``push`` | ``move`` | ``rotate``."""
    block: str | None = None
    """Colour of the block the instruction names (pick, place, push)."""
    place: str | None = None
    """Key of ``PLACES`` (place, move)."""
    direction: str | None = None
    """Key of ``DIRECTIONS`` (push)."""
    turn: float = 0.0
    """Rotation sense (rotate): +1 counterclockwise (yaw increases), -1 clockwise."""


@dataclass
class Task:
    """An instruction and the waypoints that carry it out."""

    instruction: str
    """Natural-language instruction."""
    waypoints: list[Waypoint] = field(default_factory=list)
    """Waypoints in order."""
    goal: Goal | None = None
    """The instruction's meaning."""


TASK_FAMILIES: dict[str, float] = {"pick": 0.3, "push": 0.25, "move": 0.15, "place": 0.2, "rotate": 0.1}
"""The task families and how often each is drawn (renormalized over the enabled ones)."""


@dataclass(frozen=True)
class WorldOptions:
    """What the generator draws and records beyond sizes and seed (``SyntheticDataConfig``'s
    ``tasks``/``tilt_wobble``/``idle_steps``); the closed-loop env takes the same options so it draws
    the scenes and tasks of the dataset it evaluates."""

    tasks: tuple[str, ...] = tuple(TASK_FAMILIES)
    """Enabled task families, a subset of ``TASK_FAMILIES``."""
    tilt_wobble: bool = False
    """Roll/pitch follow a slow random sinusoid whose phase no frame shows (the old default, kept for
    studies of unobservable label noise); off, the expert holds the wrist level."""
    idle_steps: int = 2
    """Steps recorded after the expert's last waypoint, holding still, before the episode ends;
    -1 records the drawn length whatever happens (the tail then holds still)."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASK_FAMILIES]
        if not self.tasks or unknown:
            raise ValueError(f"synthetic tasks must be a non-empty subset of {list(TASK_FAMILIES)}, got {list(self.tasks)}")
        if self.idle_steps < -1:
            raise ValueError(f"synthetic idle_steps must be >= -1, got {self.idle_steps}")

    @classmethod
    def from_config(cls, cfg: SyntheticDataConfig) -> WorldOptions:
        return cls(tuple(cfg.tasks), bool(cfg.tilt_wobble), int(cfg.idle_steps))


def _make_task(world: World, rng: np.random.Generator, tasks: tuple[str, ...] = tuple(TASK_FAMILIES)) -> Task:
    names = [b.color for b in world.blocks]
    weights = np.array([TASK_FAMILIES[t] for t in tasks])
    kind = str(rng.choice(list(tasks), p=weights / weights.sum())) if len(tasks) > 1 else tasks[0]
    hover = 0.45
    if kind in ("pick", "place"):
        i = int(rng.integers(len(names)))
        b = world.blocks[i]
        yaw = float(b.angle)  # align the jaws with the block: a target the frames show
        pts = [Waypoint(np.array([*b.pos, hover]), 1.0, yaw), Waypoint(np.array([*b.pos, 0.04]), 1.0),
               Waypoint(np.array([*b.pos, 0.04]), 0.0, hold=1)]
        if kind == "pick":
            up = np.array([*b.pos, 0.7])
            return Task(f"pick up the {names[i]} block", pts + [Waypoint(up, 0.0, hold=2)],
                        Goal("pick", block=names[i]))
        place = str(rng.choice(list(PLACES)))
        target = np.array(PLACES[place])
        return Task(f"put the {names[i]} block in the {place}" if place != "center" else f"put the {names[i]} block in the center",
                    pts + [Waypoint(np.array([*b.pos, 0.5]), 0.0), Waypoint(np.array([*target, 0.5]), 0.0),
                           Waypoint(np.array([*target, 0.06]), 0.0), Waypoint(np.array([*target, 0.06]), 1.0, hold=1),
                           Waypoint(np.array([*target, 0.5]), 1.0)], Goal("place", block=names[i], place=place))
    if kind == "push":
        i = int(rng.integers(len(names)))
        b = world.blocks[i]
        dname = str(rng.choice(list(DIRECTIONS)))
        d = np.array(DIRECTIONS[dname])
        start = np.clip(b.pos - d * 0.28, -0.9, 0.9)
        end = np.clip(b.pos + d * 0.35, -0.8, 0.8)
        yaw = 0.0 if dname in ("forward", "backward") else np.pi / 2
        return Task(f"push the {names[i]} block {dname}",
                    [Waypoint(np.array([*start, hover]), 0.0, yaw), Waypoint(np.array([*start, 0.05]), 0.0),
                     Waypoint(np.array([*end, 0.05]), 0.0), Waypoint(np.array([*end, 0.4]), 1.0)],
                    Goal("push", block=names[i], direction=dname))
    if kind == "move":
        place = str(rng.choice(list(PLACES)))
        # The instruction names neither a height nor a yaw: keep both (no unobservable targets).
        target = np.array([*PLACES[place], world.pose[2]])
        return Task(f"move the gripper to the {place}", [Waypoint(target, 1.0, None, hold=2)],
                    Goal("move", place=place))
    turn = float(rng.choice([-1.0, 1.0]))
    yaw0 = float(world.pose[5])
    words = "counterclockwise" if turn > 0 else "clockwise"
    return Task(f"rotate the gripper {words}",
                [Waypoint(world.pose[:3].copy(), 1.0, yaw0 + turn * 0.8), Waypoint(world.pose[:3].copy(), 0.0, yaw0 + turn * 1.6),
                 Waypoint(world.pose[:3].copy(), 1.0, yaw0 + turn * 2.4)], Goal("rotate", turn=turn))


def _path_length(world: World, task: Task) -> float:
    pos, total = world.pose[:3].copy(), 0.0
    for wp in task.waypoints:
        total += float(np.abs(wp.pos - pos).max()) + 0.04 * wp.hold
        pos = wp.pos
    return total


def _wrap(a: float) -> float:
    return (a + np.pi) % (2 * np.pi) - np.pi


class ScriptedPolicy:
    """Proportional controller through the task's waypoints, with small exploration noise.

    The speed is set so the task fits ~75% of the episode. After the last waypoint the expert holds
    still (keeping its gripper state): that tail is as predictable as the task. With ``tilt_wobble``
    roll/pitch follow a slow random sinusoid (its phase is not in any frame, so those labels are
    noise to a policy); without it the wrist stays level and roll/pitch are exactly 0."""

    def __init__(self, world: World, task: Task, length: int, rng: np.random.Generator, *,
                 tilt_wobble: bool = False) -> None:
        self.task, self.rng = task, rng
        self.i, self.held_for = 0, 0
        self.vmax = float(np.clip(_path_length(world, task) / max(1.0, 0.75 * length), 0.06, 0.16))
        self.wobble = (rng.uniform(0.1, 0.3, 2), rng.uniform(0.15, 0.5, 2), rng.uniform(0, 2 * np.pi, 2)) if tilt_wobble else None
        self.t = 0

    @property
    def done(self) -> bool:
        """Every waypoint reached."""
        return self.i >= len(self.task.waypoints)

    def __call__(self, world: World) -> np.ndarray:
        rng, pose = self.rng, world.pose
        action = np.zeros(7, np.float32)
        if self.i < len(self.task.waypoints):
            wp = self.task.waypoints[self.i]
            err = wp.pos - pose[:3]
            action[:3] = np.clip(err, -self.vmax, self.vmax)
            if wp.yaw is not None:
                action[5] = np.clip(_wrap(wp.yaw - pose[5]), -0.3, 0.3)
            action[6] = wp.grip
            if np.abs(err).max() < 0.03 and (wp.yaw is None or abs(_wrap(wp.yaw - pose[5])) < 0.1):
                self.held_for += 1
                if self.held_for > wp.hold:
                    self.i, self.held_for = self.i + 1, 0
        else:  # done: hold still, keeping the final gripper state
            action[6] = self.task.waypoints[-1].grip if self.task.waypoints else 1.0
        if self.wobble is not None:
            amp, freq, phase = self.wobble
            target_tilt = amp * np.sin(freq * self.t + phase)
            action[3:5] = np.clip(target_tilt - pose[3:5], -0.12, 0.12)
            action[:6] += rng.normal(0.0, [0.008, 0.008, 0.006, 0.01, 0.01, 0.02]).astype(np.float32)
        else:  # level wrist: roll/pitch stay exactly 0, noise only where the frames show its effect
            action[[0, 1, 2, 5]] += rng.normal(0.0, [0.008, 0.008, 0.006, 0.02]).astype(np.float32)
        self.t += 1
        return action.astype(np.float32)


def _new_world(rng: np.random.Generator) -> World:
    n = int(rng.integers(2, 4))
    colors = rng.choice(list(COLORS), size=n, replace=False)
    blocks: list[Block] = []
    while len(blocks) < n:  # rejection-sample non-overlapping placements
        pos = rng.uniform(-0.6, 0.6, 2)
        if all(np.linalg.norm(pos - b.pos) > 0.3 for b in blocks):
            blocks.append(Block(str(colors[len(blocks)]), pos, 0.0, float(rng.uniform(-0.4, 0.4))))
    pose = np.array([*rng.uniform(-0.5, 0.5, 2), rng.uniform(0.3, 0.7), 0.0, 0.0, rng.uniform(-1.0, 1.0)])
    return World(pose, 1.0, blocks)


@dataclass
class SyntheticEpisode:
    """One generated episode, before encoding."""

    images: np.ndarray
    """uint8 [T, S, S, 3] top camera."""
    wrist_images: np.ndarray
    """uint8 [T, S, S, 3] wrist camera."""
    states: np.ndarray
    """float32 [T, 8] proprio."""
    actions: np.ndarray
    """float32 [T, 7] actions (action t moves state t to state t+1)."""
    instruction: str
    """The episode's instruction."""


def episode_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG stream of episode ``index`` of ``split`` (``train``, ``val``; any other name shares
    a third stream, e.g. the closed-loop evaluation scenes of ``data_service.envs.sim_env``)."""
    return np.random.default_rng([seed, {"train": 0, "val": 1}.get(split, 2), index])


def start_episode(rng: np.random.Generator, length: int, options: WorldOptions = WorldOptions()
                  ) -> tuple[int, World, Task, ScriptedPolicy]:
    """Draws an episode's length cap T (``length`` +-25%), its scene, its task (from
    ``options.tasks``) and the scripted policy that carries it out (in that order, from ``rng``,
    which the policy keeps for its noise)."""
    T = max(2, int(round(length * rng.uniform(0.75, 1.25))))
    world = _new_world(rng)
    task = _make_task(world, rng, options.tasks)
    return T, world, task, ScriptedPolicy(world, task, T, rng, tilt_wobble=options.tilt_wobble)


def _rollout(seed: int, split: str, index: int, length: int, options: WorldOptions = WorldOptions()
             ) -> tuple[Task, Iterator[tuple[World, np.ndarray]]]:
    """The episode's task and its steps: (world before the step, action taken), a pure function
    of the arguments (own RNG stream). Rendering draws no random numbers, so every view of an
    episode (robot cameras, human video) shows the same motion. The episode ends after the drawn
    length, or ``options.idle_steps`` steps after the expert finished, whichever comes first."""
    T, world, task, policy = start_episode(episode_rng(seed, split, index), length, options)

    def steps() -> Iterator[tuple[World, np.ndarray]]:
        idle = 0
        for _ in range(T):
            if policy.done and options.idle_steps >= 0:
                if idle >= options.idle_steps:
                    return
                idle += 1
            a = policy(world)
            yield world, a
            world.step(a)

    return task, steps()


def recorded_length(seed: int, split: str, index: int, length: int, options: WorldOptions = WorldOptions()) -> int:
    """Steps the generator records for episode ``index`` (the drawn cap, or fewer when the expert
    finishes early); simulated without rendering."""
    return sum(1 for _ in _rollout(seed, split, index, length, options)[1])


def generate_episode(seed: int, split: str, index: int, length: int, image_size: int,
                     options: WorldOptions = WorldOptions()) -> SyntheticEpisode:
    """Episode ``index`` of ``split``: a pure function of its arguments (own RNG stream)."""
    task, steps = _rollout(seed, split, index, length, options)
    imgs, wrists, states, actions = [], [], [], []
    for world, a in steps:
        imgs.append(render_top(world, image_size))
        wrists.append(render_wrist(world, image_size))
        states.append(world.proprio())
        actions.append(a)
    return SyntheticEpisode(np.stack(imgs), np.stack(wrists), np.stack(states), np.stack(actions), task.instruction)


def generate_human_episode(seed: int, split: str, index: int, length: int, image_size: int,
                           options: WorldOptions = WorldOptions()) -> tuple[np.ndarray, str]:
    """The same episode filmed as human video: uint8 [T, S, S, 3] top-view frames with a hand
    where the gripper was, and the instruction (no actions)."""
    task, steps = _rollout(seed, split, index, length, options)
    return np.stack([render_human(world, image_size) for world, _ in steps]), task.instruction


PRIMARY_ENCODING = "png"
"""How the dataset stores the top camera (lossless)."""
WRIST_ENCODING = "jpeg"
"""How the dataset stores the wrist camera (lossy, as many OXE datasets do)."""


def episode_features(ep: SyntheticEpisode, split: str, index: int) -> dict[str, object]:
    """Flat RLDS Example features of one episode."""
    T = len(ep.actions)
    last = np.arange(T) == T - 1
    return {
        "steps/observation/image": [encode_image(im, PRIMARY_ENCODING) for im in ep.images],
        "steps/observation/wrist_image": [encode_image(im, WRIST_ENCODING) for im in ep.wrist_images],
        "steps/observation/state": ep.states,
        "steps/action": ep.actions,
        "steps/discount": np.ones(T, np.float32),
        "steps/reward": last.astype(np.float32),
        "steps/is_first": np.arange(T) == 0,
        "steps/is_last": last,
        "steps/is_terminal": last,
        "steps/language_instruction": [ep.instruction] * T,
        "episode_metadata/file_path": f"{NAME}/{split}/episode_{index:05d}",
    }
