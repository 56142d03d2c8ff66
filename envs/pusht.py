"""PushT (Diffusion Policy's benchmark) through ``gym-pusht``, with the observation keys of the
Diffusion Policy PushT store (``../shared/datasets/pusht_cchi_v7_replay.zarr``), so a policy
trained on that store runs here unchanged.

Observations (a dict; pixel coordinates in [0, 512]):

- ``state`` (5,): agent x, y, block x, y, block angle in [0, 2*pi), as the store's ``state``.
- ``agent_pos`` (2,): the agent's position (``state[:2]``).
- ``keypoint`` (9, 2): nine fixed points of the T in world coordinates, as the store's
  ``keypoint``. The local points below were recovered from the store (every step's keypoints
  are the same nine points moved by the block's pose, to within 0.03 px).
- ``img`` (96, 96, 3) uint8, only with ``image=True`` (rendering costs time).

Reward and metrics are gym-pusht's: ``info["coverage"]`` is the fraction of the goal area
covered by the block; the reward is ``min(coverage / 0.95, 1)``; the episode terminates with
``is_success`` once coverage exceeds 0.95 and is cut at 300 steps. The Diffusion Policy paper's
PushT score is the largest reward of an episode, averaged over episodes.
"""
from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

SUCCESS_COVERAGE = 0.95

# The store's nine keypoints in the block's frame (x, y), pixels.
LOCAL_KEYPOINTS = np.array([
    [9.2686, 90.0228], [-60.9922, -1.1872], [60.9071, -1.3929],
    [-0.2705, 25.5436], [-14.0637, 122.8113], [39.0003, 32.8608],
    [-39.9546, 32.7342], [-16.8217, 62.8724], [23.5411, -1.7001],
], dtype=np.float64)


def keypoints_from_state(state: np.ndarray) -> np.ndarray:
    """(..., 5) states -> (..., 9, 2) keypoints: the local points rotated by the block angle
    and moved to the block position."""
    state = np.asarray(state, dtype=np.float64)
    c, s = np.cos(state[..., 4]), np.sin(state[..., 4])
    x, y = LOCAL_KEYPOINTS[:, 0], LOCAL_KEYPOINTS[:, 1]
    world_x = c[..., None] * x - s[..., None] * y + state[..., 2, None]
    world_y = s[..., None] * x + c[..., None] * y + state[..., 3, None]
    return np.stack([world_x, world_y], axis=-1)


class PushTTask(gym.Env):
    """gym-pusht's PushT with the store's observation keys; ``image=True`` adds ``img``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, image: bool = False, image_size: int = 96, render_mode: str | None = None,
                 render_size: int = 192):
        from gym_pusht.envs.pusht import PushTEnv   # pygame and pymunk load with the task only

        self.image = bool(image)
        self.render_mode = render_mode
        self._env = PushTEnv(obs_type="state", render_mode="rgb_array", observation_width=image_size,
                             observation_height=image_size, visualization_width=render_size,
                             visualization_height=render_size)
        spaces = {
            "state": gym.spaces.Box(0.0, 512.0, (5,), np.float32),
            "agent_pos": gym.spaces.Box(0.0, 512.0, (2,), np.float32),
            "keypoint": gym.spaces.Box(-np.inf, np.inf, (9, 2), np.float32),
        }
        if self.image:
            spaces["img"] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(0.0, 512.0, (2,), np.float32)

    def _obs(self, state: np.ndarray) -> dict[str, np.ndarray]:
        obs = {"state": state.astype(np.float32), "agent_pos": state[:2].astype(np.float32),
               "keypoint": keypoints_from_state(state).astype(np.float32)}
        if self.image:
            obs["img"] = self._env._render(visualize=False)
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        state, info = self._env.reset(seed=seed, options=options)
        info = dict(info, coverage=self.coverage())
        return self._obs(state), info

    def set_state(self, state) -> dict[str, np.ndarray]:
        """Put the agent and block exactly at ``state`` (5,) (angle set before position, so the
        block lands where asked, unlike gym-pusht's legacy ``reset_to_state``); returns the
        observation."""
        env, state = self._env, np.asarray(state, dtype=np.float64)
        env.agent.position = state[:2].tolist()
        env.agent.velocity = (0.0, 0.0)
        env.block.angle = float(state[4])
        env.block.position = state[2:4].tolist()
        env.block.velocity, env.block.angular_velocity = (0.0, 0.0), 0.0
        for body in (env.agent, env.block):      # refresh the shapes' world vertices for drawing
            env.space.reindex_shapes_for_body(body)
        return self._obs(self._state())

    def snapshot(self) -> dict:
        """Both bodies' poses and velocities and the last action (cadence.envs.lookahead)."""
        env = self._env
        return {"agent": [*env.agent.position, *env.agent.velocity],
                "block": [*env.block.position, *env.block.velocity, env.block.angle, env.block.angular_velocity],
                "last_action": None if env._last_action is None else np.array(env._last_action, dtype=np.float64)}

    def restore(self, state: dict) -> None:
        """Put this env in a :meth:`snapshot`. pymunk's contact cache (its solver's warm start) is
        not part of it, so while the agent pushes the block the next steps match the snapshotted
        env's to within a few hundredths of a pixel, not bit for bit."""
        env = self._env
        agent, block = np.asarray(state["agent"], np.float64), np.asarray(state["block"], np.float64)
        env.agent.position, env.agent.velocity = agent[:2].tolist(), agent[2:4].tolist()
        env.block.angle, env.block.angular_velocity = float(block[4]), float(block[5])
        env.block.position, env.block.velocity = block[:2].tolist(), block[2:4].tolist()
        env._last_action = None if state["last_action"] is None else np.array(state["last_action"], np.float64)
        for body in (env.agent, env.block):
            env.space.reindex_shapes_for_body(body)

    def progress(self) -> float:
        """The reward now: coverage over the success threshold, at most 1."""
        return min(self.coverage() / SUCCESS_COVERAGE, 1.0)

    def coverage(self) -> float:
        """Fraction of the goal area the block covers now."""
        return float(self._env._get_coverage())

    def _state(self) -> np.ndarray:
        env = self._env
        return np.array([*env.agent.position, *env.block.position, env.block.angle % (2 * np.pi)])

    def step(self, action):
        state, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float64))
        return self._obs(state), float(reward), bool(terminated), bool(truncated), info

    def render(self):
        return self._env.render()

    def close(self):
        self._env.close()
