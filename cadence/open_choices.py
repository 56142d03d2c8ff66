"""The config's open choices, checked when a command starts (before any data is read or any
robot is touched): ``policy.process`` against the process registry (processes of your own
register through ``cadence --plugin MODULE``), ``robot.driver`` and ``teleop.source`` as a
built-in name or the spelling of ``package.module:ClassName``. The closed choices are enums in
the schema (:mod:`cadence.choices`) and fail earlier, when the config is composed."""
from __future__ import annotations

from omegaconf import DictConfig


def _policies(cfg: DictConfig):
    policy = cfg.get("policy")
    if isinstance(policy, DictConfig) and "process" in policy:
        yield policy
    policies = cfg.get("policies")
    if isinstance(policies, DictConfig):
        yield from (p for p in policies.values() if isinstance(p, DictConfig) and "process" in p)


def check_open_choices(cfg: DictConfig) -> None:
    """Raise a one-line ``CadenceError`` naming the key and the value that no code would run."""
    for policy in _policies(cfg):
        from cadence.policies.processes.base import process_class   # torch: only for policy commands
        process_class(str(policy.process))
    robot, teleop = cfg.get("robot"), cfg.get("teleop")
    if robot is not None or teleop is not None:
        from cadence.hardware.robot_factory import check_class_name
        from cadence.hardware.teleop_factory import TELEOP_PATHS
        if robot is not None:
            check_class_name(str(robot.driver))
        if teleop is not None:
            check_class_name(str(teleop.source), TELEOP_PATHS, "teleop.source")
