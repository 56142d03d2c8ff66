"""A scripted teleoperator for simulation: the default task's expert moving the robot through
``cadence record`` in real time, as a person would with a leader arm. Tests and benchmarks of
recording use it; nothing about it is specific to the recording command."""
from __future__ import annotations

import numpy as np

from cadence.envs.bimodal_reach_expert import BimodalReachExpert
from cadence.hardware.robot import Observation, RobotError, RobotSpec


class ScriptedTeleop:
    """The bimodal-reach expert as a :class:`~cadence.hardware.teleop.Teleop`: start and goal
    are read from the observation (``state`` = x, y, vx, vy, goal x, goal y); episodes alternate
    between passing the obstacle on the left and on the right, starting with a seeded side."""

    def __init__(self, expert: str = "bimodal_reach", seed: int = 0, key: str = "state"):
        if expert != "bimodal_reach":
            raise RobotError(f"teleop=scripted drives the bimodal_reach expert only, not {expert!r}")
        self.key = key
        self._expert = BimodalReachExpert(seed=seed)
        self._first = "left" if np.random.default_rng(seed).random() < 0.5 else "right"
        self._episodes = 0

    def connect(self, spec: RobotSpec) -> None:
        if self.key not in spec.observation or spec.action.shape != (2,):
            raise RobotError(f"teleop=scripted needs a bimodal_reach robot (observation {self.key!r}, 2-D action); "
                             f"got {sorted(spec.observation)} and action {list(spec.action.shape)}")

    def reset(self, observation: Observation) -> None:
        state = np.asarray(observation.values[self.key], float)
        other = "right" if self._first == "left" else "left"
        self._expert.reset(state[0:2], state[4:6], self._first if self._episodes % 2 == 0 else other)
        self._episodes += 1

    def action(self, observation: Observation) -> np.ndarray:
        return self._expert.act()

    def disconnect(self) -> None:
        pass
