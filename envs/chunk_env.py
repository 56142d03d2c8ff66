"""Vectorised environments at the granularity of action chunks, with a sparse success reward (RL fine-tuning).

One :meth:`ChunkVectorEnv.step` executes ``exec_horizon`` actions in each of ``n`` environments
(one chunk each: one decision of the fine-tuned policy). The reward of a chunk is 1 if the
episode succeeded during it (``info["is_success"]``) and 0 otherwise, whatever the task's own
reward; an episode ends at its first success, when the task terminates it (e.g. a collision) or
when it is truncated (time limit). Finished environments are reset at once with the next seed
(``seed``, ``seed + 1``, ... across all environments), so every step returns a full batch of
observation histories: ``{key: (n, obs_horizon, ...)}``, padded at an episode's start by
repeating its first observation. The observation an ended episode reached is in
``final_obs`` (to bootstrap a truncated episode's value).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np


@dataclass
class ChunkStep:
    obs: dict[str, np.ndarray]        # (n, To, ...): the next decision's histories (new episodes where ended)
    reward: np.ndarray                # float (n,): 1.0 where the episode succeeded during this chunk
    terminated: np.ndarray            # bool (n,): ended by success or by the task (no value after it)
    truncated: np.ndarray             # bool (n,): ended by the time limit (bootstrap from final_obs)
    final_obs: dict[str, np.ndarray]  # (n, To, ...): the histories the ended episodes reached (others: = obs)
    env_steps: int                    # actions executed in this step, over all environments
    finished: list[bool]              # success of each episode that ended in this step


class ChunkVectorEnv:
    def __init__(self, make_env: Callable[[], gym.Env], n: int, obs_horizon: int, exec_horizon: int,
                 obs_keys: Sequence[str], seed: int = 0):
        if n < 1 or obs_horizon < 1 or exec_horizon < 1:
            raise ValueError(f"need n, obs_horizon, exec_horizon >= 1, got {n}, {obs_horizon}, {exec_horizon}")
        self.envs = [make_env() for _ in range(n)]
        self.n, self.obs_horizon, self.exec_horizon, self.obs_keys = n, obs_horizon, exec_horizon, list(obs_keys)
        self.next_seed = seed
        self.history: dict[str, np.ndarray] = {}

    def reset(self) -> dict[str, np.ndarray]:
        for i in range(self.n):
            self._reset(i)
        return self._obs()

    def _reset(self, i: int) -> None:
        obs, _ = self.envs[i].reset(seed=self.next_seed)
        self.next_seed += 1
        missing = [k for k in self.obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation keys {missing} not in the env's observation (has {sorted(obs)})")
        for k in self.obs_keys:
            value = np.asarray(obs[k])
            if k not in self.history:
                self.history[k] = np.zeros((self.n, self.obs_horizon, *value.shape), value.dtype)
            self.history[k][i] = value

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.history.items()}

    def step(self, actions: np.ndarray) -> ChunkStep:
        """``actions`` (n, exec_horizon, Da) in the task's units."""
        actions = np.asarray(actions)
        if actions.shape[:2] != (self.n, self.exec_horizon):
            raise ValueError(f"actions must be (n={self.n}, exec_horizon={self.exec_horizon}, Da), "
                             f"got {actions.shape}")
        reward = np.zeros(self.n)
        terminated, truncated = np.zeros(self.n, bool), np.zeros(self.n, bool)
        env_steps, finished = 0, []
        for i, env in enumerate(self.envs):
            for t in range(self.exec_horizon):
                obs, _, term, trunc, info = env.step(actions[i, t])
                env_steps += 1
                for k in self.obs_keys:
                    self.history[k][i, :-1] = self.history[k][i, 1:]
                    self.history[k][i, -1] = obs[k]
                if info.get("is_success", False):
                    reward[i], terminated[i] = 1.0, True
                elif term:
                    terminated[i] = True
                elif trunc:
                    truncated[i] = True
                if terminated[i] or truncated[i]:
                    finished.append(bool(reward[i]))
                    break
        final_obs = self._obs()
        for i in np.flatnonzero(terminated | truncated):
            self._reset(int(i))
        return ChunkStep(self._obs(), reward, terminated, truncated, final_obs, env_steps, finished)

    def close(self) -> None:
        for env in self.envs:
            env.close()
