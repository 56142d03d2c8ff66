"""Clocks for fixed-rate loops: the real monotonic one and a simulated one for tests.

``sleep_until`` sleeps until 1 ms before the deadline and spins the rest, as Diffusion
Policy's ``precise_wait`` does: ``time.sleep`` alone overshoots by up to a scheduler tick.
"""
from __future__ import annotations

import threading
import time


class MonotonicClock:
    spin_s = 0.001

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        remaining = t - time.monotonic()
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.monotonic() < t:
            pass


class SimClock:
    """Time advances only through ``sleep_until`` / ``advance``: deterministic tests of timing
    logic. Thread-safe; ``sleep_until`` from several threads each jump time forward."""

    def __init__(self, start: float = 0.0):
        self._t = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._t

    def advance(self, dt: float) -> None:
        with self._lock:
            self._t += dt

    def sleep_until(self, t: float) -> None:
        with self._lock:
            self._t = max(self._t, t)
