"""``cadence robot serve``: any robot driver (``robot=sim`` by default: the task simulated in real
time; ``robot.driver=...`` a real arm), served over ZeroMQ, so the robot computer runs the driver
and the policy runs elsewhere (``cadence run robot=remote``).

The robot sits behind its own safety filter and watchdog (the server holds it when the
controlling loop goes quiet), binds to loopback unless ``robot.allow_remote=true``, and
answers only requests carrying the shared token (``robot.token`` or ``CADENCE_ROBOT_TOKEN``, at
least 16 bytes; see :mod:`cadence.hardware.robot_server` for the checks every request passes).

SIGTERM, SIGINT (Ctrl-C) and SIGHUP stop it cleanly: it holds the robot, closes the socket,
prints ``cadence robot serve: stopped by SIGTERM; robot held`` and exits 0; so does
``max_seconds`` running out.
"""
from __future__ import annotations

import signal
import threading

from omegaconf import DictConfig

from cadence.hardware.robot_server import RobotServer
from cadence.hardware.safety import SafetyFilter
from cadence.hardware.robot import RobotError
from cadence.hardware.robot_config import robot_token, safety_limits
from cadence.hardware.robot_factory import make_robot
from cadence.stop_signals import stop_signals


def run(cfg: DictConfig) -> dict:
    robot_cfg = cfg.robot
    rate = float(robot_cfg.rate_hz or cfg.task.fps)
    token = robot_token(robot_cfg)
    if robot_cfg.driver == "remote":
        raise RobotError("cadence robot serve serves a driver on this computer; robot.driver=remote would relay "
                         "another server")
    robot = SafetyFilter(make_robot(robot_cfg, cfg.task, rate), safety_limits(cfg.safety),
                         watchdog_timeout_s=None if cfg.safety.watchdog_ms is None else cfg.safety.watchdog_ms / 1e3)
    try:
        server = RobotServer(robot, token, robot_cfg.endpoint, allow_remote=robot_cfg.allow_remote)
    except (OSError, ValueError) as exc:
        raise RobotError(str(exc)) from None
    stop, stopped_by = threading.Event(), [f"max_seconds={cfg.max_seconds}"]

    def on_stop(signum: int) -> None:
        stopped_by[0] = signal.Signals(signum).name
        stop.set()

    timer = threading.Timer(cfg.max_seconds or 0, stop.set)
    timer.daemon = True                      # never keeps the process alive after serving
    if cfg.max_seconds:
        timer.start()
    what = cfg.task.env_id if robot_cfg.driver == "sim" else robot_cfg.driver
    print(f"serving {what} at {rate:g} Hz on {server.endpoint} (Ctrl-C to stop)", flush=True)
    with stop_signals(on_stop):              # a second signal while closing changes nothing
        try:
            server.serve(stop)
        finally:
            timer.cancel()
            server.close()                   # holds the robot; raises if it cannot
    print(f"cadence robot serve: stopped by {stopped_by[0]}; robot held", flush=True)
    stats = {"requests": server.requests, "rejections": dict(server.rejections), "robot_errors": server.robot_errors}
    print(f"served {stats['requests']} requests, rejected {sum(stats['rejections'].values())}", flush=True)
    return stats
