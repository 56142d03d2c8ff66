"""The robot seam: what the control loop talks to, whatever is behind it.

A :class:`Robot` is a simulated robot (:mod:`cadence.hardware.sim_robot`), a remote robot
reached over the network (:mod:`cadence.hardware.remote_robot`), a real driver, or any of
those wrapped in the :class:`~cadence.hardware.safety.SafetyFilter`. Times are seconds on
the host's monotonic clock (``time.monotonic()``, shared by all processes of one machine).

Calls the control loop makes on every tick (``latest_observation``, ``send_action``) must
return within a small fraction of the control period; a robot that cannot answer in time
returns ``None`` / raises :class:`RobotTimeout` rather than blocking. ``spec`` may be ``None``
until ``connect()`` (a remote robot learns it from the server). ``hold()`` and
``latest_observation()`` may be called from another thread (a watchdog, an emergency stop)
while ``send_action`` runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

import numpy as np

from cadence.errors import CadenceError


class RobotError(CadenceError, RuntimeError):
    """The robot refused a request or is not in a state to serve it."""


class RobotTimeout(RobotError):
    """The robot did not answer within the allowed time."""


def checked_action(name: str, action, shape: tuple[int, ...]) -> np.ndarray:
    """``action`` as float64 of ``shape`` with finite values, or a one-line :class:`RobotError`
    naming the robot: what every driver checks before anything moves."""
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise RobotError(f"{name}: action is not numeric: {action!r}") from e
    if a.shape != tuple(shape):
        raise RobotError(f"{name}: action shape {a.shape} != {tuple(shape)}")
    if not np.all(np.isfinite(a)):
        raise RobotError(f"{name}: action must be finite, got {a.tolist()}")
    return a


@dataclass(frozen=True)
class Feature:
    """One observation or action array: shape, dtype and (optional) elementwise bounds."""

    shape: tuple[int, ...]
    dtype: str = "float32"                    # numpy dtype name: float32 | uint8 | ...
    low: Optional[tuple[float, ...]] = None   # per element of a 1-D feature, or None
    high: Optional[tuple[float, ...]] = None

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype,
                "low": None if self.low is None else list(self.low),
                "high": None if self.high is None else list(self.high)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Feature":
        return cls(tuple(int(s) for s in d["shape"]), str(d["dtype"]),
                   None if d.get("low") is None else tuple(float(v) for v in d["low"]),
                   None if d.get("high") is None else tuple(float(v) for v in d["high"]))


@dataclass(frozen=True)
class RobotSpec:
    """What a robot observes and accepts, and how fast it runs."""

    name: str
    observation: Mapping[str, Feature]        # e.g. {"state": Feature((6,)), "image": Feature((96, 96, 3), "uint8")}
    action: Feature                           # (Da,), with low/high: the actuator limits
    rate_hz: float                            # the robot's control / observation rate

    def to_json(self) -> dict:
        return {"name": self.name, "rate_hz": self.rate_hz, "action": self.action.to_json(),
                "observation": {k: f.to_json() for k, f in self.observation.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "RobotSpec":
        return cls(str(d["name"]), {k: Feature.from_json(f) for k, f in d["observation"].items()},
                   Feature.from_json(d["action"]), float(d["rate_hz"]))


@dataclass(frozen=True)
class Observation:
    """One stamped observation. ``seq`` increases by one per robot step (per episode too)."""

    values: Mapping[str, np.ndarray]
    t_capture: float                          # monotonic time the sensors captured it
    seq: int
    info: Mapping[str, Any] = field(default_factory=dict)   # JSON-able: is_success, done, ...


@runtime_checkable
class Robot(Protocol):
    spec: RobotSpec

    def connect(self) -> None: ...

    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode (simulation; a real robot moves to its start pose) and return its
        first observation."""

    def latest_observation(self) -> Optional[Observation]:
        """The newest observation available now, or ``None`` if none has arrived yet (a remote
        robot raises :class:`RobotTimeout` when the server does not answer in time)."""

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command ``action`` (shape ``spec.action.shape``); returns the action actually applied
        (after the robot's own clipping)."""

    def hold(self) -> None:
        """Stop moving: keep the pose where the hold began until the next ``send_action``."""

    def disconnect(self) -> None: ...


@runtime_checkable
class Camera(Protocol):
    """A camera on its own clock: ``read_latest`` never blocks longer than the frame age allows."""

    name: str
    shape: tuple[int, int, int]               # (H, W, 3) uint8

    def connect(self) -> None: ...

    def read_latest(self, max_age_s: float) -> Optional[tuple[np.ndarray, float]]:
        """The newest frame and its capture time, or ``None`` if it is older than ``max_age_s``."""

    def disconnect(self) -> None: ...
