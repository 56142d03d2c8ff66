"""robosuite Lift, PickPlaceCan and NutAssemblySquare (Panda arm) as gymnasium environments.

Registered as ``cadence/Lift-v0``, ``cadence/Can-v0`` and ``cadence/Square-v0``. robosuite is
imported with this module, which gymnasium imports when an environment is made (not when
:mod:`cadence.envs` is), so a process that preloads it forks env workers with robosuite ready.

Control: robosuite's default "BASIC" composite controller, an operational-space controller
(OSC_POSE) with *delta* inputs, at 20 Hz. Action: float32 (7,) in [-1, 1]: dx, dy, dz
(x 0.05 m), droll, dpitch, dyaw (axis-angle in the robot base frame, x 0.5 rad), gripper
(+1 closes, -1 opens; the fingers move a fifth of their range per step).

Observation (``gymnasium.spaces.Dict``), robomimic's key names, float32:
  ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4, xyzw), ``robot0_gripper_qpos`` (2),
  ``object``: Lift (10) cube pos, cube quat, eef pos - cube pos; Can (14) can pos, can quat,
  can pos and quat in the gripper frame; Square (14) the same for the square nut. The order
  and signs are those of robomimic's datasets (robosuite <= 1.4); robosuite 1.5 itself puts
  the relative terms first and flips Lift's sign.
  ``{camera}_image`` uint8 (S, S, 3), right side up, for each of ``cameras`` (e.g.
  ``agentview``, ``robot0_eye_in_hand``) at ``image_size`` S.
Observations are taken after a forward pass on the state the step reached, so they equal
what robomimic extracts from a saved state and camera images equal those rendered later from
``get_sim_state()`` (:mod:`cadence.envs.robosuite_render`).

Info: ``is_success`` (robosuite's ``_check_success``), every step. An episode terminates on
success and is truncated after ``max_steps`` steps.

Seeding: ``reset(seed=s)`` reseeds robosuite's generator (object placement, robot joint
noise), so a seed fixes the initial state. The scene model itself (e.g. the Lift cube's size)
is built once per environment from a fixed seed, so every environment instance has the same
model and saved states replay in any of them.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import gymnasium as gym
import mujoco
import numpy as np

from cadence.envs.robosuite_render import CameraRenderer, image_key

CONTROL_HZ = 20
ACTION_DIM = 7
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
MODEL_SEED = 0            # builds the (randomised) scene model identically in every instance
LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")


def _cat(*arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _lift_object(raw: dict, obj: str) -> np.ndarray:
    """Object pos, quat, then eef pos - object pos (robosuite 1.5 flips this sign)."""
    return _cat(raw[f"{obj}_pos"], raw[f"{obj}_quat"], raw["robot0_eef_pos"] - raw[f"{obj}_pos"])


def _object_and_pose_in_gripper(raw: dict, obj: str) -> np.ndarray:
    """Object pos, quat, then its pos and quat in the gripper frame (computed here from the
    fresh poses: robosuite 1.5 computes the relative terms before the object's own pose, from
    the previous update's cache)."""
    from robosuite.utils import transform_utils as T

    pose = T.pose2mat((raw[f"{obj}_pos"], raw[f"{obj}_quat"]))
    world_in_gripper = T.pose_inv(T.pose2mat((raw["robot0_eef_pos"], raw["robot0_eef_quat"])))
    rel_pos, rel_quat = T.mat2pose(T.pose_in_A_to_pose_in_B(pose, world_in_gripper))
    return _cat(raw[f"{obj}_pos"], raw[f"{obj}_quat"], rel_pos, rel_quat)


@dataclass(frozen=True)
class TaskSpec:
    robosuite_name: str
    object_name: str                             # robosuite's observation prefix of the object
    object_state: Callable[[dict, str], np.ndarray]   # robosuite observation dict -> "object"
    object_dim: int
    max_steps: int                               # ~2x the scripted expert's mean episode length


TASKS = {
    "lift": TaskSpec("Lift", "cube", _lift_object, 10, 80),
    "can": TaskSpec("PickPlaceCan", "Can", _object_and_pose_in_gripper, 14, 240),
    "square": TaskSpec("NutAssemblySquare", "SquareNut", _object_and_pose_in_gripper, 14, 240),
}


@functools.lru_cache(maxsize=1)
def import_robosuite():
    """Import robosuite without its import-time warnings (no private macro file, optional
    robosuite_models and mink packages); its logger keeps reporting warnings afterwards."""
    logger = logging.getLogger("robosuite_logs")
    quiet = logging.Filter("robosuite_logs.quiet")   # matches no record: drops everything
    logger.addFilter(quiet)
    try:
        import robosuite
    finally:
        logger.removeFilter(quiet)
    logger.setLevel(logging.WARNING)   # robosuite sets INFO (e.g. "Loading controller configuration")
    return robosuite


import_robosuite()


def controller_config() -> dict:
    """robosuite's "BASIC" composite controller (OSC_POSE arm, delta inputs, GRIP gripper)
    reduced to the Panda's one arm, so robosuite does not warn about the other body parts."""
    config = import_robosuite().load_composite_controller_config(controller="BASIC")
    config["body_parts"] = {"right": config["body_parts"]["right"]}
    return config


class RobosuiteTask(gym.Env):
    """One robosuite task; subclasses set ``task`` (a key of :data:`TASKS`)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}
    task: str = ""

    def __init__(self, cameras: Sequence[str] = (), image_size: int = 84, max_steps: int | None = None,
                 render_mode: str | None = None, render_size: int = 128):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if self.task not in TASKS:
            raise ValueError(f"unknown robosuite task {self.task!r} (have {list(TASKS)})")
        self.task_spec = TASKS[self.task]
        self.cameras = [str(c) for c in (cameras or ())]
        self.image_size = int(image_size)
        self.max_steps = int(max_steps or self.task_spec.max_steps)
        self.render_mode = render_mode
        self.render_size = int(render_size)

        suite = import_robosuite()
        self._env = suite.make(
            self.task_spec.robosuite_name, robots="Panda",
            controller_configs=controller_config(),
            has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,   # we render ourselves
            use_object_obs=True, reward_shaping=False, control_freq=CONTROL_HZ,
            ignore_done=True, hard_reset=False, renderer="mujoco", seed=MODEL_SEED)
        known = list(self._env.sim.model.camera_names)
        missing = [c for c in self.cameras if c not in known]
        if missing:
            self._env.close()
            raise ValueError(f"unknown cameras {missing} (have {known})")
        self._camera_renderer = CameraRenderer(self.mj_model, self.image_size) if self.cameras else None
        self._video_renderer: CameraRenderer | None = None

        spaces = {
            "robot0_eef_pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
            "robot0_eef_quat": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
            "robot0_gripper_qpos": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "object": gym.spaces.Box(-np.inf, np.inf, (self.task_spec.object_dim,), np.float32),
        }
        for camera in self.cameras:
            spaces[image_key(camera)] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._steps = 0
        self._raw: dict = {}

    # --- simulator access (experts, rendering from states) ------------------------------
    @property
    def robosuite_env(self):
        """The wrapped robosuite environment (ground truth for scripted experts)."""
        return self._env

    @property
    def mj_model(self) -> mujoco.MjModel:
        return self._env.sim.model._model

    @property
    def mj_data(self) -> mujoco.MjData:
        return self._env.sim.data._data

    @property
    def raw_observation(self) -> dict:
        """robosuite's own observation dict at the current step."""
        return self._raw

    def get_sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (time, qpos, qvel), as robomimic's ``states``."""
        return self._env.sim.get_state().flatten()

    def set_sim_state(self, state: np.ndarray) -> dict:
        """Put the simulator in a saved state (no reset of the controller); returns the
        observation there."""
        self._env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        self._env.sim.forward()
        self._raw = self._env._get_observations(force_update=True)
        return self._observation()

    # --- lookahead (cadence.envs.lookahead) ---------------------------------------------
    def snapshot(self) -> dict:
        """MuJoCo's integration state (positions, velocities, controls, warm start, time), the
        grippers' commands (robosuite integrates them step by step) and the step counts."""
        physics = np.empty(mujoco.mj_stateSize(self.mj_model, STATE_SPEC))
        mujoco.mj_getState(self.mj_model, self.mj_data, physics, STATE_SPEC)
        return {"physics": physics, "grippers": [np.array(g.current_action) for g in self._grippers()],
                "steps": self._steps, "timestep": self._env.timestep, "cur_time": self._env.cur_time}

    def restore(self, state: dict) -> None:
        """Put this env in a :meth:`snapshot` of one of the same task (the delta end-effector
        controller sets its goal from the pose at each step, told to re-read it here)."""
        mujoco.mj_setState(self.mj_model, self.mj_data, np.asarray(state["physics"], np.float64), STATE_SPEC)
        for gripper, command in zip(self._grippers(), state["grippers"], strict=True):
            gripper.current_action = np.array(command, dtype=np.float64)
        for robot in self._env.robots:              # controllers re-read the pose at the next step
            for controller in robot.composite_controller.part_controllers.values():
                controller.new_update = True
        self._env.timestep, self._env.cur_time = int(state["timestep"]), float(state["cur_time"])
        self._env.sim.forward()
        self._raw = self._env._get_observations(force_update=True)
        self._steps = int(state["steps"])

    def _grippers(self) -> list:
        return [gripper for robot in self._env.robots for gripper in robot.gripper.values()]

    def progress(self) -> float:
        """robosuite's shaped reward (reach, grasp, lift, hover stages; 1 when solved)."""
        env, shaping = self._env, self._env.reward_shaping
        env.reward_shaping = True
        try:
            return float(env.reward())
        finally:
            env.reward_shaping = shaping

    # --- episode -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # robosuite's samplers and robot share env.rng; reseed that generator in place
        child = np.random.default_rng(int(self.np_random.integers(2**63)))
        self._env.rng.bit_generator.state = child.bit_generator.state
        self._raw = self._env.reset()
        self._steps = 0
        return self._observation(), {"is_success": bool(self._env._check_success())}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(ACTION_DIM)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        self._env.step(np.clip(action, -1.0, 1.0))
        self._env.sim.forward()     # robosuite leaves kinematics one physics substep behind
        self._raw = self._env._get_observations(force_update=True)
        self._steps += 1
        success = bool(self._env._check_success())
        truncated = not success and self._steps >= self.max_steps
        return self._observation(), float(success), success, truncated, {"is_success": success}

    def _observation(self) -> dict:
        raw = self._raw
        obs = {k: np.asarray(raw[k], dtype=np.float32) for k in LOW_DIM_KEYS[:3]}
        obs["object"] = self.task_spec.object_state(raw, self.task_spec.object_name).astype(np.float32)
        for camera in self.cameras:
            obs[image_key(camera)] = self._camera_renderer.render(self.mj_data, camera)
        return obs

    # --- rendering ---------------------------------------------------------------------
    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._video_renderer is None:
            self._video_renderer = CameraRenderer(self.mj_model, self.render_size)
        return self._video_renderer.render(self.mj_data, "agentview")

    def close(self):
        for renderer in (self._camera_renderer, self._video_renderer):
            if renderer is not None:
                renderer.close()
        self._camera_renderer = self._video_renderer = None
        if self._env is not None:
            self._env.close()
            self._env = None


class LiftEnv(RobosuiteTask):
    """Lift the cube 4 cm off the table."""
    task = "lift"


class CanEnv(RobosuiteTask):
    """PickPlaceCan: put the can into its compartment of the right-hand bin."""
    task = "can"


class SquareEnv(RobosuiteTask):
    """NutAssemblySquare: put the square nut onto the square peg."""
    task = "square"
