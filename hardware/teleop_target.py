"""The commanded position of a position-controlled robot, as the keyboard and gamepad teleops
move it: started at each episode from the measured position, moved in steps sized by the
action's range, never outside the action's limits.

The measured position is ``observation.values[key][start:stop]``: ``position=[key, start,
stop]``, or by default the one observation whose shape is the action's (a follower arm's joint
positions, ``observation.state`` of the docs' point robot).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from cadence.hardware.robot import Observation, RobotError, RobotSpec


class PositionTarget:
    """A target in action coordinates, clipped to ``spec.action``'s limits.

    ``what`` (``"teleop=keyboard"``) starts every error message.
    """

    def __init__(self, spec: RobotSpec, position: Optional[Sequence] = None, what: str = "teleop"):
        self.what = what
        action = spec.action
        if len(action.shape) != 1:
            raise RobotError(f"{what} drives 1-D actions; this robot's action has shape {list(action.shape)}")
        if action.low is None or action.high is None:
            raise RobotError(f"{what} needs the robot's action limits (spec.action.low/high) to size its steps; "
                             f"robot {spec.name!r} gives none")
        self.low = np.asarray(action.low, np.float64)
        self.high = np.asarray(action.high, np.float64)
        n = action.shape[0]
        if self.low.shape != (n,) or self.high.shape != (n,) or not np.all(np.isfinite(self.range)):
            raise RobotError(f"{what} needs {n} finite action limits; robot {spec.name!r} gives "
                             f"low={list(action.low)} high={list(action.high)}")
        self.key, self.start, self.stop = self._measured(spec, position, n)
        self.value: Optional[np.ndarray] = None

    @property
    def range(self) -> np.ndarray:
        """``high - low`` per action element."""
        return self.high - self.low

    def reset(self, observation: Observation) -> np.ndarray:
        """Start from the measured position in ``observation`` (clipped to the limits)."""
        if self.key not in observation.values:
            raise RobotError(f"{self.what}: the observation has no {self.key!r} (keys {sorted(observation.values)})")
        measured = np.asarray(observation.values[self.key], np.float64).reshape(-1)[self.start:self.stop]
        if measured.shape != self.low.shape or not np.all(np.isfinite(measured)):
            raise RobotError(f"{self.what}: {self.key}[{self.start}:{self.stop}] should be {self.low.size} finite "
                             f"numbers, got {measured.tolist()}")
        self.value = np.clip(measured, self.low, self.high)
        return self.command()

    def move(self, delta: np.ndarray) -> None:
        """Add ``delta`` (action units) and clip to the limits."""
        if self.value is not None:
            self.value = np.clip(self.value + delta, self.low, self.high)

    def command(self) -> Optional[np.ndarray]:
        """The target as the robot's action (float32), or ``None`` before the first reset."""
        return None if self.value is None else self.value.astype(np.float32)

    def _measured(self, spec: RobotSpec, position: Optional[Sequence], n: int) -> tuple[str, int, int]:
        if position is not None:
            try:
                key, start, stop = position
                key, start, stop = str(key), int(start), int(stop)
            except (TypeError, ValueError):
                raise RobotError(f"{self.what}: position must be [key, start, stop], got {position!r}") from None
            if key not in spec.observation:
                raise RobotError(f"{self.what}: position names {key!r}, not an observation of robot {spec.name!r} "
                                 f"({sorted(spec.observation)})")
            if stop - start != n:
                raise RobotError(f"{self.what}: position {key}[{start}:{stop}] holds {stop - start} values; "
                                 f"the action has {n}")
            return key, start, stop
        shaped = [k for k, f in spec.observation.items() if tuple(f.shape) == tuple(spec.action.shape)]
        if len(shaped) != 1:
            raise RobotError(f"{self.what}: cannot tell which observation is the measured position "
                             f"({len(shaped)} shaped like the action {list(spec.action.shape)}: {shaped}); "
                             "set position=[key, start, stop] in teleop.options")
        return shaped[0], 0, n
