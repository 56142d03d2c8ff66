"""Add a constant one-hot ``task_id`` to a task's observations (members of a multitask suite)."""
from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np


class TaskIdObservation(gym.ObservationWrapper):
    def __init__(self, env: gym.Env, task_id: Sequence[float], key: str = "task_id"):
        super().__init__(env)
        self.key, self.task_id = key, np.asarray(task_id, dtype=np.float32)
        spaces = dict(env.observation_space.spaces)
        spaces[key] = gym.spaces.Box(0.0, 1.0, self.task_id.shape, np.float32)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation: dict) -> dict:
        return {**observation, self.key: self.task_id.copy()}
