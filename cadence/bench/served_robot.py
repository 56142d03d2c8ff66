"""A ``cadence robot serve`` process on loopback for the benchmarks that drive a robot over the
network (``bench loop``, ``bench server``): started on a free port, stopped by a signal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cadence.hardware.robot import RobotError


def start_server(task_name: str, token: str, seconds: float, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start ``cadence robot serve`` on a free loopback port; its output goes to ``log_path``."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "cadence.cli", "robot", "serve", f"task={task_name}",
                             "robot.endpoint=tcp://127.0.0.1:*", f"max_seconds={seconds:.0f}"],
                            env={**os.environ, "CADENCE_ROBOT_TOKEN": token}, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text().splitlines():
            if line.startswith("serving ") and " on " in line:
                return proc, line.split(" on ")[1].split()[0]
        time.sleep(0.1)
    proc.kill()
    raise RobotError(f"the robot server did not start: {log_path.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen, sig: int, log_path: Path) -> None:
    """Send ``sig`` and wait for the server to exit (killed, and an error, after 30 s)."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RobotError(f"the robot server did not stop on {signal.Signals(sig).name}; see {log_path}") from None
