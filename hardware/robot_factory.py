"""The one place a robot is built from the ``robot`` config group (the user's own command line
or YAML; never a checkpoint's or an export's config).

``robot.driver`` is a built-in name (``sim``, ``remote``, ``replay``, ``so101``/``so100``) or an
import path ``package.module:ClassName``; a class is called with ``robot.options`` as keyword
arguments. ``robot.cameras`` attaches cameras to any driver
(:class:`~cadence.hardware.camera_robot.WithCameras`). Imports no torch, so ``cadence robot
serve`` stays small.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from cadence.hardware.robot import RobotError

# A robot is a class plus a YAML: built-in arms are import paths like a user's own driver.
DRIVER_PATHS = {"so101": "cadence.hardware.so101:SO101Follower", "so100": "cadence.hardware.so101:SO101Follower"}
ROBOT_METHODS = ("connect", "reset", "latest_observation", "send_action", "hold", "disconnect")


@dataclass(frozen=True)
class RobotContext:
    """What the command knows that the built-in kinds need: the task (its simulator, its store),
    the step rate, a checkpoint's held-out episodes and the action lead."""

    task: Any
    rate_hz: float
    held_out: list[int] | None = None
    lead_s: float = 0.0


def make_robot(robot_cfg, task_cfg, rate_hz: float, held_out: list[int] | None = None, lead_s: float = 0.0):
    """The robot ``robot_cfg.driver`` names, with ``robot_cfg.cameras`` attached."""
    driver = str(robot_cfg.driver)
    check_class_name(driver)
    ctx = RobotContext(task_cfg, rate_hz, held_out, lead_s)
    if driver in BUILTINS:
        if robot_cfg.options:
            raise RobotError(f"robot.options is for drivers given by import path; robot.driver={driver} takes "
                             f"its settings as robot.* keys (got options {sorted(robot_cfg.options)})")
        robot = BUILTINS[driver](robot_cfg, ctx)
    else:
        robot = build_driver(DRIVER_PATHS.get(driver, driver), dict(robot_cfg.options or {}))
    if robot_cfg.cameras:
        from cadence.hardware.camera_robot import WithCameras, cameras_from_config
        cameras, max_ages = cameras_from_config(robot_cfg.cameras)
        robot = WithCameras(robot, cameras, max_ages)
    return robot


def check_class_name(name: str, known=None, what: str = "robot.driver") -> None:
    """``name`` is one of ``known`` (default: the built-in robot drivers) or spelled as an import
    path ``package.module:ClassName``; nothing is imported (a command checks this when it starts)."""
    known = sorted({*BUILTINS, *DRIVER_PATHS} if known is None else known)
    module_name, sep, class_name = name.partition(":")
    if name not in known and (not sep or not module_name or not class_name.isidentifier()):
        raise RobotError(f"{what}={name!r}: expected {f'one of {known} or ' if known else ''}an import path "
                         "package.module:ClassName")


def load_class(path: str, what: str = "robot.driver") -> type:
    """``package.module:ClassName`` imported (the current directory on the path, as ``python -m``)."""
    check_class_name(path, (), what)
    module_name, _, class_name = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RobotError(f"{what}={path!r}: cannot import {module_name!r} ({exc}); is it installed or on "
                         "PYTHONPATH?") from None
    cls = getattr(module, class_name, None)
    if not callable(cls):
        raise RobotError(f"{what}={path!r}: module {module_name!r} has no class {class_name!r}")
    return cls


def build_driver(path: str, options: dict, methods: tuple[str, ...] = ROBOT_METHODS, what: str = "robot.driver"):
    """``ClassName(**options)`` of the class at ``path``, checked to have ``methods``."""
    cls = load_class(path, what)
    try:
        obj = cls(**options)
    except TypeError as exc:
        raise RobotError(f"{what}={path}: {exc} (check the options)") from None
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    if missing:
        raise RobotError(f"{what}={path}: {type(obj).__name__} lacks {', '.join(missing)} "
                         f"(a driver implements {', '.join(methods)} and a spec)")
    return obj


def _sim(robot_cfg, ctx: RobotContext):
    if ctx.task.env_id is None:
        raise RobotError("robot=sim: this policy was trained without a simulator (task.env_id is null); "
                         "rehearse it on recordings with robot=replay, or drive a real robot")
    from cadence.hardware.sim_robot import SimRobot
    return SimRobot(ctx.task.env_id, dict(ctx.task.env_kwargs), rate_hz=ctx.rate_hz,
                    sensor_latency_s=robot_cfg.sensor_latency_ms / 1e3,
                    actuation_latency_s=robot_cfg.actuation_latency_ms / 1e3, obs_keys=list(ctx.task.obs_keys))


def _remote(robot_cfg, ctx: RobotContext):
    from cadence.hardware.remote_robot import RemoteRobot
    from cadence.hardware.robot_config import robot_token
    # obs_max_age_s=0: ask for the newest observation every tick (one extra loopback round trip,
    # ~0.3 ms) rather than act on the one that came back with the previous tick's command.
    return RemoteRobot(robot_cfg.endpoint, robot_token(robot_cfg), timeout_s=robot_cfg.timeout_ms / 1e3,
                       obs_max_age_s=0.0)


def _replay(robot_cfg, ctx: RobotContext):
    """Plays ``held_out`` (a checkpoint's validation episodes) by default when it replays the
    task's own store, every episode of another store, and scores each action for the step
    ``lead_s`` ahead (``control.action_lead_ms``)."""
    from cadence.hardware.replay_robot import ReplayRobot
    task = ctx.task
    if task.get("task_id"):
        raise RobotError("robot=replay does not replay a multitask suite's members yet")
    own_store = robot_cfg.dataset is None or robot_cfg.dataset == task.dataset
    episodes = robot_cfg.episodes if robot_cfg.episodes is not None else (ctx.held_out if own_store else None)
    return ReplayRobot(robot_cfg.dataset or task.dataset, list(task.obs_keys), task.action_key,
                       episodes=list(episodes) if episodes else None, rate_hz=ctx.rate_hz,
                       slices=dict(task.get("obs_slices") or {}), lead_s=ctx.lead_s)


BUILTINS: dict[str, Callable[[Any, RobotContext], Any]] = {"sim": _sim, "remote": _remote, "replay": _replay}
