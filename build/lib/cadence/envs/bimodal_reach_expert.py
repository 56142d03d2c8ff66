"""Scripted expert for the bimodal reach task.

It drives a "carrot" (the position-servo target) along a polyline around the chosen side of
the obstacle: sideways first, up along the side, then diagonally to the goal. Moving sideways
early makes the two modes differ already in the first action chunk, so a policy can commit to
one. The carrot leads the agent by the servo's steady-state lag (speed * damping / kp).
"""
from __future__ import annotations

import numpy as np

SIDE_X = 0.55       # |x| of the lane beside the obstacle (obstacle + agent radius = 0.3)
TURN_Y = 0.35       # where the lane ends and the diagonal to the goal begins
SERVO_LAG = 12.0 / 40.0  # damping / kp of the agent's servos: lag per unit speed


class BimodalReachExpert:
    """Call :meth:`reset` with the episode's start, goal and side, then :meth:`act` each step."""

    def __init__(self, speed: tuple[float, float] = (0.4, 0.5), noise: float = 0.01,
                 dt: float = 0.1, seed: int | None = None):
        self.speed_range = speed
        self.noise = noise
        self.dt = dt
        self.rng = np.random.default_rng(seed)
        self._path = None

    def reset(self, start, goal, side: str) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        sign = -1.0 if side == "left" else 1.0
        start, goal = np.asarray(start, float), np.asarray(goal, float)
        points = np.array([start, (sign * SIDE_X, start[1]), (sign * SIDE_X, TURN_Y), goal])
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        self._path = points
        self._cum = np.concatenate([[0.0], np.cumsum(seg)])
        self._speed = self.rng.uniform(*self.speed_range)
        self._s = 0.0

    def _point_at(self, s: float) -> np.ndarray:
        s = min(s, self._cum[-1])
        i = min(np.searchsorted(self._cum, s, side="right") - 1, len(self._path) - 2)
        u = (s - self._cum[i]) / max(self._cum[i + 1] - self._cum[i], 1e-9)
        return self._path[i] + u * (self._path[i + 1] - self._path[i])

    def act(self) -> np.ndarray:
        if self._path is None:
            raise RuntimeError("call reset() before act()")
        self._s += self._speed * self.dt
        target = self._point_at(self._s + self._speed * SERVO_LAG)
        return (target + self.rng.normal(0.0, self.noise, 2)).astype(np.float32)
