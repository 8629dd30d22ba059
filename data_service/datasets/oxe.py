"""Open X-Embodiment (OpenVLA's ``oxe_magic_soup`` and its ``_plus`` additions) and LIBERO.

Facts per dataset: raw RLDS keys of the cameras, of the proprio (8-D: POS_EULER = xyz, rpy, pad,
gripper; POS_QUAT = xyz, quaternion, gripper; JOINT = 7 joints, gripper) and of the 7-D EEF_POS
action, the raw gripper convention (made absolute, 1 = open), BGR cameras, control frequency and
the robot. They follow OpenVLA's per-dataset configs/transforms and the OXE dataset sheet; the
part syntax (``key[a:b]``, ``zeros:N``, ``zlib:``, ``quat2euler:``) is in ``standardize``.

Known gaps, kept explicit rather than guessed: DROID's zero-action filter is not applied; BGR
flags for hydra / mutex / fanuc come from a LeRobot report (#435) and apply to both views.
"""

from __future__ import annotations

from lavla.data_service.datasets.dataset_spec import DatasetSpec, lam_stride_for

EMBODIMENTS: dict[str, int] = {
    "synthetic": 0,
    "google_robot": 1,
    "kuka_iiwa": 2,
    "widowx": 3,
    "franka": 4,
    "jaco": 5,
    "sawyer": 6,
    "ur5": 7,
    "xarm": 8,
    "dlr_edan": 9,
    "fanuc": 10,
    "hello_stretch": 11,
    "libero_panda": 12,
    "human": 13,
}
"""Robot -> ``embodiment_id`` (same robot and EEF_POS action space share a head; max 32)."""

_O = "steps/observation/"
_A = "steps/action/"
_OLD_LANG = _O + "natural_language_instruction"  # the datasets Google converted keep it in the observation
_NEW_LANG = "steps/language_instruction"
_RT1_ACTION = (_A + "world_vector", _A + "rotation_delta", _A + "gripper_closedness_action")
_PAD = "zeros:1"


def _spec(name: str, hz: float, robot: str, primary: str | None, *, wrist: str | None = None,
          proprio: tuple[str, ...] = (), layout: str = "none", action: tuple[str, ...] = ("steps/action",),
          gripper: str = "open_1", language: str | None = _NEW_LANG, version: str = "0.1.0", **kw: object) -> DatasetSpec:
    return DatasetSpec(
        name=name, image_primary_key=None if primary is None else _O + primary,
        image_wrist_key=None if wrist is None else _O + wrist, proprio_keys=proprio, proprio_layout=layout,
        action_keys=action, gripper_convention=gripper, control_hz=hz, lam_stride=lam_stride_for(hz),
        embodiment_id=EMBODIMENTS[robot], language_key=language, version=version, **kw,  # type: ignore[arg-type]
    )


_MAGIC_SOUP = [
    _spec("fractal20220817_data", 3, "google_robot", "image",
          proprio=(_O + "base_pose_tool_reached", _O + "gripper_closed"), layout="pos_quat",
          action=_RT1_ACTION, gripper="relative", language=_OLD_LANG),
    _spec("kuka", 10, "kuka_iiwa", "image",
          proprio=("zlib:" + _O + "clip_function_input/base_pose_tool_reached", "zlib:" + _O + "gripper_closed"),
          layout="pos_quat", action=_RT1_ACTION, gripper="relative", language=_OLD_LANG),
    # Bridge V2 from the project site: first step's action is all zeros (dropped); movement actions
    # are relabelled as reached-state differences, which leaves the last step without one.
    _spec("bridge_orig", 5, "widowx", "image_0", proprio=(_O + "state[0:6]", _PAD, _O + "state[-1:]"),
          layout="pos_euler", action=("steps/action",), gripper="binarize", transform="relabel_from_state",
          drop_first_steps=1, drop_last_steps=1, version="1.0.0"),
    _spec("taco_play", 15, "franka", "rgb_static", wrist="rgb_gripper",
          proprio=(_O + "robot_obs[0:6]", _PAD, _O + "robot_obs[7:8]"), layout="pos_euler",
          action=(_A + "rel_actions_world",), gripper="clip01", language=_OLD_LANG),
    _spec("jaco_play", 10, "jaco", "image", wrist="image_wrist",
          proprio=(_O + "end_effector_cartesian_pos[0:6]", _PAD, _O + "end_effector_cartesian_pos[-1:]"),
          layout="pos_euler", action=(_A + "world_vector", "zeros:3", _A + "gripper_closedness_action"),
          gripper="relative", language=_OLD_LANG),
    # No gripper action is recorded: the gripper dim is a constant 0, as in OpenVLA.
    _spec("berkeley_cable_routing", 10, "franka", "image", wrist="wrist45_image",
          proprio=(_O + "robot_state", _PAD), layout="joint",
          action=(_A + "world_vector", _A + "rotation_delta", "zeros:1"), language=_OLD_LANG),
    _spec("roboturk", 10, "sawyer", "front_rgb", action=_RT1_ACTION, gripper="clip01_invert", language=_OLD_LANG),
    _spec("viola", 20, "franka", "agentview_rgb", wrist="eye_in_hand_rgb",
          proprio=(_O + "joint_states", _O + "gripper_states[0:1]"), layout="joint",
          action=_RT1_ACTION, gripper="clip01_invert", language=_OLD_LANG),
    _spec("berkeley_autolab_ur5", 5, "ur5", "image", wrist="hand_image", bgr_wrist=True,
          proprio=(_O + "robot_state[6:14]",), layout="pos_quat", action=_RT1_ACTION, gripper="relative",
          language=_OLD_LANG),
    _spec("toto", 30, "franka", "image", proprio=(_O + "state", _PAD), layout="joint",
          action=(_A + "world_vector", _A + "rotation_delta", _A + "open_gripper"), language=_OLD_LANG),
    # 2-D end-effector pushes; the gripper is always "open". Instructions are code-point arrays.
    _spec("language_table", 10, "xarm", "rgb", proprio=(_O + "effector_translation", "zeros:6"), layout="pos_euler",
          action=("steps/action", "zeros:4", "ones:1"), language="codepoints:" + _O + "instruction"),
    _spec("stanford_hydra_dataset_converted_externally_to_rlds", 10, "franka", "image", wrist="wrist_image",
          bgr=True, bgr_wrist=True, proprio=(_O + "state[0:3]", _O + "state[7:10]", _PAD, _O + "state[-3:-2]"),
          layout="pos_euler", action=("steps/action[0:6]", "steps/action[-1:]"), gripper="close_1"),
    _spec("austin_buds_dataset_converted_externally_to_rlds", 20, "franka", "image", wrist="wrist_image",
          proprio=(_O + "state[0:8]",), layout="joint", action=("steps/action[0:6]", "steps/action[-1:]"),
          gripper="clip01_invert"),
    _spec("nyu_franka_play_dataset_converted_externally_to_rlds", 3, "franka", "image",
          proprio=(_O + "state[-6:]", _PAD, _PAD), layout="pos_euler",
          action=("steps/action[-8:-2]", "steps/action[-2:-1]"), gripper="clip01"),
    _spec("furniture_bench_dataset_converted_externally_to_rlds", 10, "franka", "image", wrist="wrist_image",
          proprio=(_O + "state[0:7]", _O + "state[-1:]"), layout="pos_quat",
          action=("steps/action[0:3]", "quat2euler:steps/action[3:7]", "steps/action[-1:]"), gripper="clip01_invert"),
    _spec("ucsd_kitchen_dataset_converted_externally_to_rlds", 2, "xarm", "image",
          proprio=(_O + "state[0:7]", _PAD), layout="joint", action=("steps/action[0:-1]",)),
    _spec("austin_sailor_dataset_converted_externally_to_rlds", 20, "franka", "image", wrist="wrist_image",
          proprio=(_O + "state",), layout="pos_quat", action=("steps/action[0:6]", "steps/action[-1:]"),
          gripper="clip01_invert"),
    _spec("austin_sirius_dataset_converted_externally_to_rlds", 20, "franka", "image", wrist="wrist_image",
          proprio=(_O + "state",), layout="pos_quat", action=("steps/action[0:6]", "steps/action[-1:]"),
          gripper="clip01_invert"),
    _spec("dlr_edan_shared_control_converted_externally_to_rlds", 5, "dlr_edan", "image",
          proprio=(_O + "state", _PAD), layout="pos_euler", action=("steps/action[0:6]", "steps/action[-1:]"),
          gripper="close_1"),
    _spec("iamlab_cmu_pickup_insert_converted_externally_to_rlds", 20, "franka", "image", wrist="wrist_image",
          proprio=(_O + "state[0:7]", _O + "state[7:8]"), layout="joint",
          action=("steps/action[0:3]", "quat2euler:steps/action[3:7]", "steps/action[7:8]")),
    _spec("utaustin_mutex", 20, "franka", "image", wrist="wrist_image", bgr=True, bgr_wrist=True,
          proprio=(_O + "state[0:8]",), layout="joint", action=("steps/action[0:6]", "steps/action[-1:]"),
          gripper="clip01_invert"),
    # No gripper action: the (inverted) gripper state stands in for it.
    _spec("berkeley_fanuc_manipulation", 10, "fanuc", "image", wrist="wrist_image", bgr=True, bgr_wrist=True,
          proprio=(_O + "state[0:6]", _PAD, _O + "state[6:7]"), layout="joint",
          action=("steps/action", _O + "state[6:7]"), gripper="close_1"),
    _spec("cmu_stretch", 10, "hello_stretch", "image",
          proprio=(_O + "state[0:3]", "zeros:3", _PAD, _O + "state[-1:]"), layout="pos_euler",
          action=("steps/action[0:-1]",)),
]

_PLUS = [
    _spec("bc_z", 10, "google_robot", "image",
          proprio=(_O + "present/xyz", _O + "present/axis_angle", _PAD, _O + "present/sensed_close"), layout="pos_euler",
          action=(_A + "future/xyz_residual[0:3]", _A + "future/axis_angle_residual[0:3]", _A + "future/target_close[0:1]"),
          gripper="close_1", language=_OLD_LANG),
    _spec("fmb_dataset", 10, "franka", "image_side_1", wrist="image_wrist_1",
          proprio=(_O + "eef_pose", _O + "state_gripper_pose"), layout="pos_euler", version="1.0.0"),
    _spec("dobbe", 3.75, "hello_stretch", "wrist_image", proprio=(_O + "state",), layout="pos_euler", version="0.0.1"),
    _spec("droid", 15, "franka", "exterior_image_1_left", wrist="wrist_image_left",
          proprio=(_O + "cartesian_position", _O + "gripper_position"), layout="pos_euler",
          action=("steps/action_dict/cartesian_velocity", "steps/action_dict/gripper_position"),
          gripper="close_1", version="1.0.1"),
]

# LIBERO (OpenVLA's no-op-filtered RLDS builds): raw gripper -1 open .. +1 close; 2-D gripper state.
_LIBERO = [
    _spec(f"libero_{suite}_no_noops", 20, "libero_panda", "image", wrist="wrist_image",
          proprio=(_O + "state[0:6]", _O + "state[-2:]"), layout="pos_euler",
          action=("steps/action[0:6]", "steps/action[-1:]"), gripper="clip01_invert", version="1.0.0")
    for suite in ("spatial", "object", "goal", "10")
]

OXE_SPECS: list[DatasetSpec] = _MAGIC_SOUP + _PLUS + _LIBERO
"""Every OXE / LIBERO spec registered by default."""

_MAGIC_SOUP_WEIGHTS: list[tuple[str, float]] = [
    ("fractal20220817_data", 0.54087122203),
    ("kuka", 0.8341046294),
    ("bridge_orig", 1.0),
    ("taco_play", 2.0),
    ("jaco_play", 1.0),
    ("berkeley_cable_routing", 1.0),
    ("roboturk", 2.0),
    ("viola", 2.0),
    ("berkeley_autolab_ur5", 2.0),
    ("toto", 1.0),
    ("language_table", 0.1),
    ("stanford_hydra_dataset_converted_externally_to_rlds", 2.0),
    ("austin_buds_dataset_converted_externally_to_rlds", 1.0),
    ("nyu_franka_play_dataset_converted_externally_to_rlds", 3.0),
    ("furniture_bench_dataset_converted_externally_to_rlds", 0.1),
    ("ucsd_kitchen_dataset_converted_externally_to_rlds", 2.0),
    ("austin_sailor_dataset_converted_externally_to_rlds", 1.0),
    ("austin_sirius_dataset_converted_externally_to_rlds", 1.0),
    ("dlr_edan_shared_control_converted_externally_to_rlds", 1.0),
    ("iamlab_cmu_pickup_insert_converted_externally_to_rlds", 1.0),
    ("utaustin_mutex", 1.0),
    ("berkeley_fanuc_manipulation", 2.0),
    ("cmu_stretch", 1.0),
]
_PLUS_WEIGHTS = [("bc_z", 0.2), ("fmb_dataset", 1.0), ("dobbe", 0.2), ("droid", 0.06)]

OXE_MIXTURES: dict[str, list[tuple[str, float]]] = {
    "oxe_magic_soup": _MAGIC_SOUP_WEIGHTS,
    "oxe_magic_soup_plus": _MAGIC_SOUP_WEIGHTS + _PLUS_WEIGHTS,
    # The largest OpenVLA config: fractal at 1.0, without language_table and droid.
    "oxe_magic_soup_plus_minus": [(n, 1.0 if n == "fractal20220817_data" else w)
                                  for n, w in _MAGIC_SOUP_WEIGHTS + _PLUS_WEIGHTS
                                  if n not in ("language_table", "droid")],
    "libero_4_task_suites": [(s.name, 1.0) for s in _LIBERO],
    **{s.name.removesuffix("_no_noops"): [(s.name, 1.0)] for s in _LIBERO},
}
"""Named OXE / LIBERO mixtures with OpenVLA's weights (x num_transitions, normalized)."""
