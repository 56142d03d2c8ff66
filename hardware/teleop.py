"""The teleoperation seam: what ``cadence record`` reads a person's commands from.

A :class:`Teleop` turns whatever the person moves (a leader arm, keys, a gamepad; a scripted
source in simulation) into the follower robot's action, in the units of the robot's
``spec.action``. ``action`` is called once per control tick with the robot's newest
observation and must return within a small fraction of the control period; ``None`` means
"no command this tick" (the robot holds). Episode decisions (keep, discard, re-record, stop)
come from :class:`~cadence.hardware.record_keys.RecordKeys`, not from the teleop source.
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import numpy as np

from cadence.hardware.robot import Observation, RobotSpec


@runtime_checkable
class Teleop(Protocol):
    def connect(self, spec: RobotSpec) -> None:
        """Open the device; ``spec`` is the follower robot's (its action shape and limits)."""

    def reset(self, observation: Observation) -> None:
        """A new episode starts from ``observation``."""

    def action(self, observation: Observation) -> Optional[np.ndarray]:
        """The command for this tick (shape ``spec.action.shape``), or ``None`` to hold."""

    def disconnect(self) -> None: ...
