"""The embedded default task: reach a goal past an obstacle, on the left or on the right.

A planar point mass (radius 0.05) starts just below a cylinder obstacle (radius 0.25, at the
origin) and must reach a goal disc above it. Either side works; going straight — what a policy
that averages the two ways produces — hits the obstacle. Touching the obstacle ends the
episode as a failure.

Observation (``gymnasium.spaces.Dict``):
  ``state``  float32 (6,): agent x, y, vx, vy, goal x, goal y
  ``image``  uint8 (S, S, 3): top-down camera, only when ``image_size`` is set
Action: float32 (2,), the absolute target position of the agent's position servos.
Info: ``is_success``, ``collided``, ``mode`` ("left", "right" or "none": the side of the
obstacle the agent was on when it first came level with its centre), ``distance``.

``side="left"`` or ``"right"`` makes a variant whose success also needs that mode: the same
observations, a different task (the multitask suite's members differ only in this).
"""
from __future__ import annotations

from importlib import resources

import gymnasium as gym
import mujoco
import numpy as np

OBSTACLE_RADIUS = 0.25
AGENT_RADIUS = 0.05
GOAL_TOLERANCE = 0.1
CONTROL_HZ = 10
SUBSTEPS = 10  # physics at 100 Hz
MODES = ("left", "right")
SIDES = ("either", *MODES)
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


def _load_model() -> mujoco.MjModel:
    xml = resources.files("cadence.envs").joinpath("assets/bimodal_reach.xml").read_text()
    return mujoco.MjModel.from_xml_string(xml)


class BimodalReachEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(self, image_size: int | None = None, max_steps: int = 120,
                 render_mode: str | None = None, render_size: int = 192, side: str = "either"):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        self.side = side
        self.model = _load_model()
        self.data = mujoco.MjData(self.model)
        self.image_size = image_size
        self.max_steps = max_steps
        self.render_mode = render_mode
        self.render_size = render_size
        self._obstacle = self.model.geom("obstacle").id
        self._agent = self.model.geom("agent").id
        self._goal_site = self.model.site("goal").id
        self._renderers: dict[int, mujoco.Renderer] = {}
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)}
        if image_size:
            spaces["image"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.5, 1.5, (2,), np.float32)
        self.goal = np.zeros(2)
        self._steps = 0
        self._collided = False
        self._mode = "none"

    # --- episode -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options`` may fix ``start`` and ``goal`` (each an (x, y) pair)."""
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        start = np.asarray(options.get("start", (rng.uniform(-0.1, 0.1), -0.6 + rng.uniform(-0.1, 0.1))), float)
        self.goal = np.asarray(options.get("goal", (rng.uniform(-0.1, 0.1), 1.0 + rng.uniform(-0.1, 0.1))), float)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = start
        self.data.ctrl[:] = start
        self.model.site_pos[self._goal_site, :2] = self.goal
        mujoco.mj_forward(self.model, self.data)
        self._steps, self._collided, self._mode = 0, False, "none"
        return self._observation(), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=float).reshape(2)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        self.data.ctrl[:] = np.clip(action, self.action_space.low, self.action_space.high)
        for _ in range(SUBSTEPS):
            mujoco.mj_step(self.model, self.data)
            self._collided |= self._touching_obstacle()
            self._update_mode()
        self._steps += 1
        info = self._info()
        terminated = bool(info["is_success"] or self._collided)
        truncated = bool(not terminated and self._steps >= self.max_steps)
        reward = 1.0 if info["is_success"] else 0.0
        return self._observation(), reward, terminated, truncated, info

    def _touching_obstacle(self) -> bool:
        for i in range(self.data.ncon):
            pair = {self.data.contact[i].geom1, self.data.contact[i].geom2}
            if pair == {self._agent, self._obstacle}:
                return True
        return False

    def _update_mode(self) -> None:
        x, y = self.data.qpos
        if self._mode == "none" and y >= 0.0:
            self._mode = "left" if x < 0.0 else "right"

    # --- lookahead (cadence.envs.lookahead) ---------------------------------------------
    def snapshot(self) -> dict:
        """The whole state: MuJoCo's integration state (positions, velocities, controls, warm
        start, time), the goal and the episode's counters."""
        physics = np.empty(mujoco.mj_stateSize(self.model, STATE_SPEC))
        mujoco.mj_getState(self.model, self.data, physics, STATE_SPEC)
        return {"physics": physics, "goal": self.goal.copy(), "steps": self._steps,
                "collided": self._collided, "mode": self._mode}

    def restore(self, state: dict) -> None:
        """Put this env exactly in a :meth:`snapshot` of one of the same task."""
        mujoco.mj_setState(self.model, self.data, np.asarray(state["physics"], np.float64), STATE_SPEC)
        self.goal = np.array(state["goal"], dtype=float)
        self.model.site_pos[self._goal_site, :2] = self.goal
        mujoco.mj_forward(self.model, self.data)
        self._steps, self._collided, self._mode = int(state["steps"]), bool(state["collided"]), str(state["mode"])

    def progress(self) -> float:
        """Minus the distance to the goal."""
        return -float(np.linalg.norm(self.data.qpos - self.goal))

    # --- observation -------------------------------------------------------------------
    @property
    def position(self) -> np.ndarray:
        return self.data.qpos.copy()

    def hold_action(self) -> np.ndarray:
        """The action that keeps the agent where it is: its current position as the servo target."""
        return self.data.qpos.astype(np.float32)

    def _observation(self) -> dict:
        state = np.concatenate([self.data.qpos, self.data.qvel, self.goal]).astype(np.float32)
        obs = {"state": state}
        if self.image_size:
            obs["image"] = self._render(self.image_size)
        return obs

    def _info(self) -> dict:
        distance = float(np.linalg.norm(self.data.qpos - self.goal))
        on_side = self.side == "either" or self._mode == self.side
        return {"is_success": bool(distance < GOAL_TOLERANCE and not self._collided and on_side),
                "collided": bool(self._collided), "mode": self._mode, "distance": distance}

    def _render(self, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self.model, size, size)
        renderer.update_scene(self.data, camera="top")
        return renderer.render().copy()

    def render(self):
        if self.render_mode == "rgb_array":
            return self._render(self.render_size)
        return None

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
