"""A complete robot driver in one file: a 2-D point that follows its position command with a
first-order lag, stepped on its own thread. Copy it as the start of your own driver.

    cadence robot check robot.driver=point_robot:PointRobot robot.options.rate_hz=50   # from this folder

A driver is any class with ``spec``, ``connect``, ``reset``, ``latest_observation``,
``send_action``, ``hold`` and ``disconnect`` (see ``cadence/hardware/robot.py``); its keyword
arguments come from ``robot.options``.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from cadence.hardware.robot import Feature, Observation, RobotError, RobotSpec


class PointRobot:
    def __init__(self, rate_hz: float = 30.0, time_constant_s: float = 0.1, limit: float = 1.0):
        box = Feature((2,), "float32", (-limit,) * 2, (limit,) * 2)
        self.spec = RobotSpec("point", {"observation.state": box}, box, float(rate_hz))
        self._alpha = 1.0 - np.exp(-1.0 / (rate_hz * time_constant_s))
        self._limit = limit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._position = np.zeros(2)
        self._target = np.zeros(2)
        self._latest: Observation | None = None
        self._seq = 0

    def connect(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def reset(self, seed: int | None = None) -> Observation:
        with self._lock:
            self._position[:] = self._target[:] = 0.0
            return self._publish()

    def latest_observation(self) -> Observation | None:
        with self._lock:                 # never blocks longer than one state update
            return self._latest

    def send_action(self, action: np.ndarray) -> np.ndarray:
        if self._thread is None:
            raise RobotError("point: not connected")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise RobotError(f"point: action must be 2 finite numbers, got {a.tolist()}")
        applied = np.clip(a, -self._limit, self._limit)
        with self._lock:
            self._target = applied
        return applied.astype(np.float32)

    def hold(self) -> None:
        with self._lock:
            self._target = self._position.copy()

    def disconnect(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    # the robot's own loop: one state update and one stamped observation per period
    def _run(self) -> None:
        period, t_next = 1.0 / self.spec.rate_hz, time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                self._step()
                self._publish()
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))

    def _step(self) -> None:
        self._position += self._alpha * (self._target - self._position)

    def _publish(self) -> Observation:
        self._seq += 1
        self._latest = Observation({"observation.state": self._position.astype(np.float32)},
                                   t_capture=time.monotonic(), seq=self._seq)
        return self._latest
