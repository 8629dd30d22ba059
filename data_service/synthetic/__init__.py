"""The synthetic world: a small rendered tabletop written as a real RLDS dataset.

A top-down camera looks at a table with 2-3 coloured blocks and a two-jaw gripper. The 7-D action
``(dx, dy, dz, droll, dpitch, dyaw, gripper)`` (gripper absolute, 1 = open) moves the gripper
visibly: x/y move it, z scales it and pulls its shadow away, yaw turns the jaws, roll/pitch tilt
the fingers off the wrist, the gripper value spreads or closes the jaws. A closed gripper near the
table grasps the block under it and carries it; a low gripper pushes blocks out of its way. A
scripted noisy policy carries out one instruction per episode ("pick up the red block", "push the
blue block left", "move the gripper to the top right", ...). A wrist camera renders the scene
around the gripper, rotating with it.

It is the quickstart's data and the test fixture, so it is deterministic per seed (every episode
has its own RNG stream) and small: the default build takes a few seconds.

The same episodes are also rendered as human-style video (a hand instead of the gripper, no
action labels): mp4 clips and an annotation CSV under ``DIR/synthetic_human_video`` for the video
source (:mod:`data_service.video.source`).

CLI: ``python -m lavla.data_service.synthetic --out DIR`` writes ``DIR/synthetic_world/1.0.0`` and
``DIR/synthetic_human_video`` (``--no-videos`` skips the latter).

Modules: ``world`` (state and physics), ``render`` (cameras), ``tasks`` (tasks, the scripted expert,
episodes), ``writers`` (the RLDS dataset and the videos on disk), ``__main__`` (the CLI). The names
other packages use are re-exported here.
"""

from lavla.data_service.synthetic.render import render_human, render_top, render_wrist
from lavla.data_service.synthetic.tasks import (
    PRIMARY_ENCODING,
    TASK_FAMILIES,
    WRIST_ENCODING,
    Goal,
    ScriptedPolicy,
    Task,
    WorldOptions,
    _rollout,
    episode_rng,
    generate_episode,
    generate_human_episode,
    recorded_length,
    start_episode,
)
from lavla.data_service.synthetic.world import DIRECTIONS, NAME, PLACES, VERSION, Block, World
from lavla.data_service.synthetic.writers import HUMAN_NAME, generate_synthetic_human_video, generate_synthetic_world

__all__ = ["DIRECTIONS", "HUMAN_NAME", "NAME", "PLACES", "PRIMARY_ENCODING", "TASK_FAMILIES", "VERSION", "WRIST_ENCODING",
           "Block", "Goal", "ScriptedPolicy", "Task", "World", "WorldOptions", "_rollout", "episode_rng",
           "generate_episode", "generate_human_episode", "generate_synthetic_human_video", "generate_synthetic_world",
           "recorded_length", "render_human", "render_top", "render_wrist", "start_episode"]
