"""A robot and its safety limits from the ``robot`` / ``safety`` config groups (the user's own
command line or YAML). Imports no torch, so ``cadence robot serve`` stays small."""
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


def make_robot(robot_cfg, task_cfg, rate_hz: float, held_out: list[int] | None = None, lead_s: float = 0.0):
    """The robot ``robot_cfg.kind`` names. A replay robot plays ``held_out`` (a checkpoint's
    validation episodes) by default when it replays the task's own store, every episode of
    another store, and scores each action for the step ``lead_s`` ahead (``control.action_lead_ms``)."""
    if robot_cfg.kind == "replay":
        from cadence.hardware.replay_robot import ReplayRobot
        if task_cfg.get("task_id"):
            raise RobotError("robot=replay does not replay a multitask suite's members yet")
        own_store = robot_cfg.dataset is None or robot_cfg.dataset == task_cfg.dataset
        episodes = robot_cfg.episodes if robot_cfg.episodes is not None else (held_out if own_store else None)
        return ReplayRobot(robot_cfg.dataset or task_cfg.dataset, list(task_cfg.obs_keys), task_cfg.action_key,
                           episodes=list(episodes) if episodes else None, rate_hz=rate_hz,
                           slices=dict(task_cfg.get("obs_slices") or {}), lead_s=lead_s)
    if task_cfg.env_id is None and robot_cfg.kind == "sim":
        raise RobotError("robot=sim: this policy was trained without a simulator (task.env_id is null); "
                         "rehearse it on recordings with robot=replay, or drive a real robot")
    if robot_cfg.kind == "sim":
        from cadence.hardware.sim_robot import SimRobot
        return SimRobot(task_cfg.env_id, dict(task_cfg.env_kwargs), rate_hz=rate_hz,
                        sensor_latency_s=robot_cfg.sensor_latency_ms / 1e3,
                        actuation_latency_s=robot_cfg.actuation_latency_ms / 1e3, obs_keys=list(task_cfg.obs_keys))
    if robot_cfg.kind == "remote":
        from cadence.hardware.remote_robot import RemoteRobot
        # obs_max_age_s=0: ask for the newest observation every tick (one extra loopback round trip,
        # ~0.3 ms) rather than act on the one that came back with the previous tick's command.
        return RemoteRobot(robot_cfg.endpoint, robot_token(robot_cfg), timeout_s=robot_cfg.timeout_ms / 1e3,
                           obs_max_age_s=0.0)
    raise RobotError(f"robot.kind must be sim, remote or replay, got {robot_cfg.kind!r}")


def safety_limits(safety_cfg) -> SafetyLimits:
    pos = safety_cfg.position_obs
    return SafetyLimits(max_delta=safety_cfg.max_delta,
                        workspace_low=None if safety_cfg.workspace_low is None else list(safety_cfg.workspace_low),
                        workspace_high=None if safety_cfg.workspace_high is None else list(safety_cfg.workspace_high),
                        position_obs=None if pos is None else (str(pos[0]), int(pos[1]), int(pos[2])))
