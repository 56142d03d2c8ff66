"""The remote robot's token and the safety limits from the ``robot`` / ``safety`` config groups
(the user's own command line or YAML; robots themselves: :mod:`cadence.hardware.robot_factory`)."""
from __future__ import annotations

import os

from cadence.hardware.robot import RobotError
from cadence.hardware.safety import SafetyLimits
from cadence.hardware.wire import check_token


def robot_token(robot_cfg) -> str:
    """``robot.token`` or ``$CADENCE_ROBOT_TOKEN``; :class:`RobotError` if missing or shorter than 16 bytes."""
    token = robot_cfg.token or os.environ.get("CADENCE_ROBOT_TOKEN", "")
    if not token:
        raise RobotError("the remote robot needs a shared token: set robot.token=... or CADENCE_ROBOT_TOKEN")
    check_token(token)
    return token


def safety_limits(safety_cfg) -> SafetyLimits:
    pos = safety_cfg.position_obs
    return SafetyLimits(max_delta=safety_cfg.max_delta,
                        workspace_low=None if safety_cfg.workspace_low is None else list(safety_cfg.workspace_low),
                        workspace_high=None if safety_cfg.workspace_high is None else list(safety_cfg.workspace_high),
                        position_obs=None if pos is None else (str(pos[0]), int(pos[1]), int(pos[2])))
