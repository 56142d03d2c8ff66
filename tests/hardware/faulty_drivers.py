"""Drivers that break one item of the loop's contract each, for ``cadence robot check``: the
example driver of the docs (``docs/examples/point_robot.py``) with one fault."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "examples"))
from point_robot import PointRobot  # noqa: E402


class BlockingRobot(PointRobot):
    """``latest_observation`` waits 500 ms for the next reading instead of returning the newest."""

    def latest_observation(self):
        time.sleep(0.5)
        return super().latest_observation()


class DriftingRobot(PointRobot):
    """``hold`` leaves the point creeping on at 0.1 units/s instead of stopping it."""

    def hold(self) -> None:
        self._creeping = True

    def _step(self) -> None:
        if getattr(self, "_creeping", False):
            self._target = self._target + 0.1 / self.spec.rate_hz
        super()._step()


class WallClockRobot(PointRobot):
    """Stamps observations with ``time.time()`` (the wall clock) instead of ``time.monotonic()``."""

    def _publish(self):
        obs = super()._publish()
        self._latest = type(obs)(obs.values, time.time(), obs.seq)
        return self._latest
