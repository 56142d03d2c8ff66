"""An SO-101 arm end to end over simulated Feetech buses in their own processes (the driver's own
serial code on real ptys): record with a leader arm, train on the store, drive the follower with
`cadence run` behind the safety filter, and find the arm inside the workspace afterwards."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cadence.datasets.episode_store import EpisodeStore
from cadence.hardware.arm_calibration import load_calibration
from cadence.hardware.so101 import SO101Follower

from .test_cli import TINY_POLICY, TINY_TRAIN, cadence

pytestmark = pytest.mark.timeout(600)
LOW, HIGH = [-20, -20, -20, -20, -20, 10], [20, 20, 20, 20, 20, 90]
SLOW_BUS = "robot.options.timeout_ms=1000"          # a loaded test machine may starve the simulator


@pytest.fixture
def buses(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "cadence.hardware.feetech_bus_process", *extra], cwd=tmp_path,
                              stdout=subprocess.PIPE, text=True) for extra in ([], ["--wave", "3"])]
    try:
        yield [p.stdout.readline().split()[1] for p in procs]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def test_record_train_and_run_an_arm_over_the_bus(tmp_path, buses):
    follower, leader = buses
    arm = [f"robot=so101", f"robot.options.port={follower}", SLOW_BUS]
    out = cadence("record", *arm, "teleop=leader", f"teleop.options.port={leader}", "teleop.options.timeout_ms=1000",
                  "task.dataset=arm.zarr", "task.fps=30", "record.episodes=3", "record.episode_s=2", cwd=tmp_path).stdout
    assert "recorded 3 episodes into arm.zarr" in out
    store = EpisodeStore.open(tmp_path / "arm.zarr")
    state = store.episode(0, ["observation.state", "action"])
    assert store.fps == 30 and state["observation.state"].shape[1] == 6 and state["action"].shape[1] == 6
    assert np.ptp(state["action"][:, 0]) > 5                       # the leader's wave reached the follower's commands

    cadence("train", "task=store", "task.dataset=arm.zarr", "run_dir=runs/arm", *TINY_POLICY, *TINY_TRAIN,
            "train.val_episodes=1", cwd=tmp_path)
    cadence("run", "checkpoint=runs/arm", *arm, "budget.runtimes=[onnx-cpu]", "budget.steps=[2]", "budget.calls=2",
            "budget.warmup=1", "budget.calibration=2", "control.episodes=1", "control.max_ticks=150",
            f"safety.workspace_low={LOW}", f"safety.workspace_high={HIGH}", "safety.max_delta=5", "out_dir=deploy",
            cwd=tmp_path)
    summary = json.loads((tmp_path / "deploy" / "summary.json").read_text())
    assert summary["robot"] == "so101" and summary["rate_hz"] == 30 and summary["episodes"] == 1
    assert summary["timing"]["ticks"] >= 140 and summary["safety"]["refused_commands"] == 0
    ticks = [json.loads(line) for line in (tmp_path / "deploy" / "ticks.jsonl").read_text().splitlines()]
    applied = np.array([t["applied"] for t in ticks if t["applied"] is not None])
    assert len(applied) > 100 and np.all(applied >= LOW) and np.all(applied <= HIGH)   # the workspace held

    robot = SO101Follower(follower, timeout_ms=1000)               # the arm where the run left it
    robot.connect()
    try:
        position = robot.reset().values["observation.state"]
    finally:
        robot.disconnect()
    assert np.all(position >= np.array(LOW) - 1.0) and np.all(position <= np.array(HIGH) + 1.0), position


def test_calibrate_writes_a_file_the_driver_loads(tmp_path, buses):
    _, leader = buses                                             # moved by hand along a 3 s sine
    out = cadence("robot", "calibrate", f"port={leader}", "out=cal.json", "seconds=3.5", "timeout_ms=1000",
                  cwd=tmp_path).stdout
    assert "wrote cal.json" in out
    cal = load_calibration(tmp_path / "cal.json")
    assert cal["wrist_roll"].range_min == 0 and cal["wrist_roll"].range_max == 4095      # the full turn
    for name in ("shoulder_pan", "elbow_flex", "gripper"):        # the sine's travel: 2048 +- 600 after homing
        assert abs(cal[name].range_min - 1448) < 60 and abs(cal[name].range_max - 2648) < 60, cal[name]
    robot = SO101Follower(leader, calibration=str(tmp_path / "cal.json"), timeout_ms=1000)
    robot.connect()
    try:
        state = robot.reset().values["observation.state"]
    finally:
        robot.disconnect()
    assert np.all(np.abs(state[:4]) <= 100.5)                    # inside the calibrated range
