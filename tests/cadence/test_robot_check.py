"""``cadence robot check`` as a user runs it: on a robot served by another process, on a driver of
their own, and on a faulty one (exit 1, the item named in the table and the JSON)."""
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli import cadence

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
FAST = ["check.seconds=1", "check.settle_s=0.3", "check.hold_s=0.6", "check.latency_fraction=1.0"]


@pytest.mark.parametrize("served, position", [
    ([], "safety.position_obs=[state,0,2]"),                                  # the simulated task
    (["robot.driver=point_robot:PointRobot", "robot.options.rate_hz=10"], "check.step=0.02"),   # a user's driver
])
def test_check_passes_a_robot_served_by_another_process(tmp_path, served, position):
    env = {**os.environ, "CADENCE_ROBOT_TOKEN": secrets.token_hex(16)}
    server = subprocess.Popen([sys.executable, "-m", "cadence.cli", "robot", "serve", "robot.endpoint=tcp://127.0.0.1:*",
                               "max_seconds=120", *served], cwd=ROOT / "docs" / "examples", env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        assert "serving" in line, line + server.stdout.read()
        endpoint = line.split(" on ")[1].split()[0]
        proc = subprocess.run([sys.executable, "-m", "cadence.cli", "robot", "check", "robot=remote",
                               f"robot.endpoint={endpoint}", position, "--move", *FAST],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "robot-check.json").read_text())
    assert result["ok"] and result["driver"] == "remote" and result["move"]
    assert {i["name"]: i["result"] for i in result["items"]}["hold"] == "pass"


def test_a_users_own_driver_with_options_on_the_command_line(tmp_path):
    proc = cadence("robot", "check", "robot.driver=point_robot:PointRobot", "robot.options.rate_hz=40",
                   f"out={tmp_path / 'check.json'}", *FAST, cwd=ROOT / "docs" / "examples")
    assert "all items pass" in proc.stdout and "40 Hz" in proc.stdout


def test_a_faulty_driver_exits_1_naming_the_item(tmp_path):
    proc = cadence("robot", "check", "robot.driver=tests.hardware.faulty_drivers:DriftingRobot",
                   f"out={tmp_path / 'check.json'}", *FAST, cwd=ROOT, check=False)
    assert proc.returncode == 1 and "FAILED: hold" in proc.stdout
    assert "| hold        | FAIL" in proc.stdout
    items = json.loads((tmp_path / "check.json").read_text())["items"]
    assert [i["name"] for i in items if i["result"] == "fail"] == ["hold"]
