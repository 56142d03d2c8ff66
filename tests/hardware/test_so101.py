"""The SO-101 follower and leader, and arm calibration, against the Feetech bus simulator:
a real pty, the real vendor SDK and pyserial, no mocks."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from cadence.hardware import feetech_bus_sim as fsim
from cadence.hardware.arm_calibration import (MOTOR_NAMES, CalibrationError, MotorCalibration, calibration_from_json,
                                              calibration_to_json, default_calibration, load_calibration, normalize,
                                              normalize_position, record_ranges, save_calibration,
                                              set_half_turn_homing, unnormalize, unnormalize_position)
from cadence.hardware.conformance import CheckSettings, check_robot
from cadence.hardware.feetech_bus import FeetechBus
from cadence.hardware.feetech_bus_sim import FeetechBusSim
from cadence.hardware.robot import Feature, Robot, RobotError, RobotSpec
from cadence.hardware.so101 import STATE_KEY, SO101Follower, SO101Leader
from cadence.hardware.teleop import Teleop

from .waiting import wait_until

IDS = [1, 2, 3, 4, 5, 6]
# The simulator is a thread of this process: on a loaded machine it can be descheduled for
# hundreds of ms, so answers get a generous timeout; only where a motor is really absent
# (the test waits out the timeout) a short one.
TIMEOUT_MS = 2000
ABSENT_TIMEOUT_MS = 500
# A calibration file as LeRobot writes it (lerobot-calibrate, SO-101 follower).
LEROBOT_FILE = {
    "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1470, "range_min": 758, "range_max": 3292},
    "shoulder_lift": {"id": 2, "drive_mode": 0, "homing_offset": 157, "range_min": 814, "range_max": 3267},
    "elbow_flex": {"id": 3, "drive_mode": 0, "homing_offset": -1276, "range_min": 870, "range_max": 3092},
    "wrist_flex": {"id": 4, "drive_mode": 0, "homing_offset": 1028, "range_min": 873, "range_max": 3223},
    "wrist_roll": {"id": 5, "drive_mode": 0, "homing_offset": -1999, "range_min": 0, "range_max": 4095},
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 1383, "range_min": 2031, "range_max": 3460},
}


@pytest.fixture
def sim():
    with FeetechBusSim() as s:
        yield s
    assert s.error is None, s.error


@pytest.fixture
def follower(sim):
    robot = SO101Follower(sim.port, rate_hz=30.0, timeout_ms=TIMEOUT_MS)
    robot.connect()
    yield robot
    robot.disconnect()


def state(robot) -> np.ndarray:
    return robot.latest_observation().values[STATE_KEY]


# --- calibration -----------------------------------------------------------------------
def test_lerobot_calibration_file_loads_and_round_trips(tmp_path):
    path = tmp_path / "my_follower.json"
    path.write_text(json.dumps(LEROBOT_FILE, indent=4))
    cal = load_calibration(path)
    assert list(cal) == list(MOTOR_NAMES)
    assert cal["elbow_flex"] == MotorCalibration(3, 0, -1276, 870, 3092)
    out = tmp_path / "sub" / "saved.json"
    save_calibration(cal, out)
    assert json.loads(out.read_text()) == LEROBOT_FILE and load_calibration(out) == cal
    assert sorted(p.name for p in out.parent.iterdir()) == ["saved.json"]   # no temporary left
    default = default_calibration()
    assert calibration_from_json(calibration_to_json(default)) == default
    assert [m.id for m in default.values()] == IDS


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("gripper"), "no calibration for motor 'gripper'"),
    (lambda d: d.update(elbow={}), "unknown motor 'elbow'"),
    (lambda d: d["wrist_flex"].update(range_min=3300), "wrist_flex range must satisfy"),
    (lambda d: d["wrist_flex"].update(range_max=4096), "wrist_flex range must satisfy"),
    (lambda d: d["shoulder_lift"].update(homing_offset=12.5), "shoulder_lift.homing_offset must be an integer"),
    (lambda d: d["shoulder_lift"].pop("drive_mode"), "shoulder_lift.drive_mode is missing"),
    (lambda d: d["gripper"].update(drive_mode=2), "gripper.drive_mode must be 0 or 1"),
    (lambda d: d["gripper"].update(id=1), "gripper.id 1 is also shoulder_pan's id"),
    (lambda d: d["gripper"].update(id=True), "gripper.id must be an integer"),
])
def test_bad_calibration_is_a_one_line_error_naming_file_and_key(tmp_path, edit, message):
    data = json.loads(json.dumps(LEROBOT_FILE))
    edit(data)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError) as e:
        load_calibration(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_unreadable_calibration_files(tmp_path):
    with pytest.raises(CalibrationError, match="cannot read the calibration file"):
        load_calibration(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match=r"bad.json: not JSON \(.* at line 1\)"):
        load_calibration(tmp_path / "bad.json")


def test_normalization_matches_lerobot_both_ways():
    joint = MotorCalibration(1, 0, 0, 1000, 3000)
    assert normalize_position(joint, 1000) == -100 and normalize_position(joint, 2000) == 0
    assert normalize_position(joint, 3000) == 100 and normalize_position(joint, 5) == -100   # clipped
    assert normalize_position(MotorCalibration(1, 1, 0, 1000, 3000), 1500) == 50             # inverted
    grip = MotorCalibration(6, 0, 0, 2000, 3000)
    assert normalize_position(grip, 2000, gripper=True) == 0 and normalize_position(grip, 2250, True) == 25
    assert normalize_position(MotorCalibration(6, 1, 0, 2000, 3000), 2250, True) == 75
    assert unnormalize_position(joint, 150) == 3000 and unnormalize_position(grip, 50, True) == 2500
    cal = {**calibration_from_json(LEROBOT_FILE), "elbow_flex": MotorCalibration(3, 1, 0, 870, 3092)}
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.uniform([-100] * 5 + [0], [100] * 6)
        back = normalize(cal, unnormalize(cal, v))
        assert back.dtype == np.float32 and np.allclose(back, v, atol=0.1)


def test_record_ranges_while_a_person_moves_the_joints(sim):
    motors = dict(zip(MOTOR_NAMES, IDS))
    seen: list[dict[str, int]] = []
    stop = threading.Event()
    result: dict = {}
    with FeetechBus(sim.port, timeout_ms=TIMEOUT_MS) as bus:
        bus.set_torque(IDS, True)
        offsets = set_half_turn_homing(bus, motors)          # everything reads the middle now
        assert offsets == {n: 1 for n in MOTOR_NAMES} and sim.position(4) == 2047
        thread = threading.Thread(target=lambda: result.update(
            cal=record_ranges(bus, motors, stop, full_turn=("wrist_roll",), progress=lambda p, lo, hi: seen.append(p))))
        thread.start()
        for name, i in motors.items():
            if name == "wrist_roll":
                continue
            for raw in (1000 + 100 * i, 3000 + 50 * i, 2047):
                sim.set_position(i, raw)
                n = len(seen)
                assert wait_until(lambda: len(seen) > n + 1 and seen[-1][name] == raw)
        stop.set()
        thread.join()
    cal = result["cal"]
    assert sim.register(1, fsim.TORQUE_ENABLE) == 0
    for name, i in motors.items():
        expected = (0, 4095) if name == "wrist_roll" else (1000 + 100 * i, 3000 + 50 * i)
        assert (cal[name].id, cal[name].homing_offset, cal[name].range_min, cal[name].range_max) == (i, 1, *expected)
    with FeetechBus(sim.port, timeout_ms=TIMEOUT_MS) as bus:
        with pytest.raises(CalibrationError, match="shoulder_pan did not move"):
            record_ranges(bus, {"shoulder_pan": 1}, 0.05)


# --- follower --------------------------------------------------------------------------
def test_follower_connects_configures_and_observes(follower, sim):
    assert isinstance(follower, Robot)
    spec = follower.spec
    assert spec.action.shape == (6,) and spec.action.low == (-100,) * 5 + (0,) and spec.action.high == (100,) * 6
    assert spec.observation[STATE_KEY].shape == (6,) and spec.rate_hz == 30.0
    for i in IDS:   # LeRobot's settings and the calibration are in the motors; torque on
        assert [sim.register(i, a) for a in (fsim.OPERATING_MODE, fsim.P_COEFFICIENT, fsim.I_COEFFICIENT,
                                             fsim.D_COEFFICIENT, fsim.TORQUE_ENABLE)] == [0, 16, 0, 32, 1]
        assert (sim.register(i, fsim.MIN_POSITION_LIMIT, 2), sim.register(i, fsim.MAX_POSITION_LIMIT, 2)) == (500, 3596)
    assert sim.register(6, 16, 2) == 500                  # the gripper's torque limit
    first = follower.latest_observation()
    assert first is not None and first.values[STATE_KEY].dtype == np.float32
    assert np.allclose(first.values[STATE_KEY], [0, 0, 0, 0, 0, 50], atol=0.1)
    assert wait_until(lambda: follower.latest_observation().seq >= first.seq + 3)
    obs = follower.latest_observation()
    assert obs.t_capture > first.t_capture and time.monotonic() - obs.t_capture < 1.0


def test_follower_connect_does_not_jump_to_a_stale_goal(sim):
    with FeetechBus(sim.port) as bus:
        bus.sync_write("Goal_Position", {i: 3500 for i in IDS})   # left over from an earlier session
    sim.set_position(2, 2300)
    robot = SO101Follower(sim.port, timeout_ms=TIMEOUT_MS)
    robot.connect()
    try:
        time.sleep(0.2)
        assert sim.position(2) == 2300 and sim.position(1) == 2048
    finally:
        robot.disconnect()


def test_send_action_clips_and_reaches(follower, sim):
    applied = follower.send_action(np.array([50, -50, 0, 0, 0, 80]))
    assert applied.dtype == np.float32 and applied.tolist() == [50, -50, 0, 0, 0, 80]
    assert wait_until(lambda: np.allclose(state(follower), applied, atol=0.5))
    applied = follower.send_action(np.array([150, -50, 0, 0, 0, -20], dtype=np.float32))
    assert applied.tolist() == [100, -50, 0, 0, 0, 0]                       # clipped to the limits
    assert wait_until(lambda: sim.register(1, fsim.GOAL_POSITION, 2) == 3596)   # a sync write is not answered
    assert sim.register(6, fsim.GOAL_POSITION, 2) == 500
    for bad in (np.array([np.nan, 0, 0, 0, 0, 0]), np.zeros(5), np.array([0, 0, 0, 0, np.inf, 0]), "left"):
        with pytest.raises(RobotError):
            follower.send_action(bad)


def test_max_relative_target_bounds_each_step(sim):
    robot = SO101Follower(sim.port, max_relative_target=5.0, timeout_ms=TIMEOUT_MS)
    robot.connect()
    try:
        applied = robot.send_action(np.array([60, -60, 0, 3, 0, 100]))
        assert np.allclose(applied, [5, -5, 0, 3, 0, 55], atol=0.1)     # around the present 0, ..., 50
        assert wait_until(lambda: np.allclose(state(robot), applied, atol=0.5))
        applied = robot.send_action(np.array([60, -60, 0, 3, 0, 100]))
        assert np.allclose(applied, [10, -10, 0, 3, 0, 60], atol=0.6)
    finally:
        robot.disconnect()


def test_hold_keeps_the_arm_still():
    with FeetechBusSim(max_speed=300.0) as sim:                             # slow: ~5 s for this move
        follower = SO101Follower(sim.port, timeout_ms=TIMEOUT_MS)
        follower.connect()
        try:
            follower.send_action(np.array([90, 0, 0, 0, 0, 50]))
            assert wait_until(lambda: state(follower)[0] > 3)                  # moving
            follower.hold()
            time.sleep(0.15)
            before = state(follower).copy()
            time.sleep(0.4)
            assert np.allclose(state(follower), before, atol=0.1)
            assert before[0] < 60                                           # stopped short of the target
        finally:
            follower.disconnect()


def test_estop_turns_torque_off_until_reset(follower, sim):
    follower.send_action(np.array([20, 0, 0, 0, 0, 50]))
    follower.estop()
    assert [sim.register(i, fsim.TORQUE_ENABLE) for i in IDS] == [0] * 6
    with pytest.raises(RobotError, match="emergency-stopped"):
        follower.send_action(np.zeros(6))
    follower.hold()                                                         # harmless while stopped
    sim.set_position(3, 2500)                                               # limp: a person can move it
    assert wait_until(lambda: state(follower)[2] > 25)
    obs = follower.reset()
    assert [sim.register(i, fsim.TORQUE_ENABLE) for i in IDS] == [1] * 6
    assert abs(obs.values[STATE_KEY][2] - state(follower)[2]) < 1.0 and sim.position(3) == 2500   # no jump
    follower.send_action(np.zeros(6) + [0, 0, 0, 0, 0, 50])
    assert wait_until(lambda: sim.position(3) == 2048)


def test_reset_moves_to_the_start_pose(sim):
    pose = [10, -10, 5, 0, -5, 60]
    robot = SO101Follower(sim.port, start_pose=pose, reset_speed=100.0, timeout_ms=TIMEOUT_MS)
    try:
        obs = robot.reset(seed=3)                                           # connects
        assert np.allclose(obs.values[STATE_KEY], pose, atol=2.0)
    finally:
        robot.disconnect()


def test_disconnect_is_idempotent_and_final(sim):
    robot = SO101Follower(sim.port, timeout_ms=TIMEOUT_MS)
    robot.connect()
    robot.disconnect()
    robot.disconnect()
    assert robot.latest_observation() is None
    assert [sim.register(i, fsim.TORQUE_ENABLE) for i in IDS] == [0] * 6
    with pytest.raises(RobotError, match="not connected"):
        robot.send_action(np.zeros(6))
    robot.hold()
    keep = SO101Follower(sim.port, disable_torque_on_disconnect=False, timeout_ms=TIMEOUT_MS)
    keep.connect()
    keep.disconnect()
    assert [sim.register(i, fsim.TORQUE_ENABLE) for i in IDS] == [1] * 6


def test_missing_motors_are_named(sim):
    sim.set_online(4, False)
    sim.set_online(6, False)
    robot = SO101Follower(sim.port, timeout_ms=ABSENT_TIMEOUT_MS)
    with pytest.raises(RobotError) as e:
        robot.connect()
    assert str(e.value) == (f"SO-101 on {sim.port}: motors 4 (wrist_flex), 6 (gripper) did not answer a ping "
                            "(is the arm powered, and are the ids those of the calibration?)")
    sim.set_online(4, True)
    sim.set_online(6, True)
    robot.bus.timeout_ms = TIMEOUT_MS
    robot.connect()                                                         # the port was closed: retry works
    robot.disconnect()


def test_a_lerobot_calibration_is_written_to_the_motors(sim, tmp_path):
    path = tmp_path / "follower.json"
    path.write_text(json.dumps(LEROBOT_FILE))
    robot = SO101Follower(sim.port, calibration=path, timeout_ms=TIMEOUT_MS)
    robot.connect()
    try:
        assert sim.register(1, fsim.HOMING_OFFSET, 2) == 1470 | 0x800
        assert sim.register(6, fsim.MIN_POSITION_LIMIT, 2) == 2031
        raw = {n: (sim.position(i)) for n, i in zip(MOTOR_NAMES, IDS)}
        expected = normalize(robot.calibration, raw)
        assert wait_until(lambda: np.allclose(state(robot), expected, atol=0.1))
    finally:
        robot.disconnect()


# --- leader -> follower ----------------------------------------------------------------
def test_leader_drives_the_follower():
    with FeetechBusSim() as leader_sim, FeetechBusSim() as follower_sim:
        follower = SO101Follower(follower_sim.port, timeout_ms=TIMEOUT_MS)
        leader = SO101Leader(leader_sim.port, timeout_ms=TIMEOUT_MS, max_failures=2)
        assert isinstance(leader, Teleop)
        follower.connect()
        try:
            leader.connect(follower.spec)
            assert [leader_sim.register(i, fsim.TORQUE_ENABLE) for i in IDS] == [0] * 6
            leader.reset(follower.latest_observation())
            for i, raw in zip(IDS, [1200, 2900, 2500, 1800, 3100, 3000]):
                leader_sim.set_position(i, raw)
            action = leader.action(follower.latest_observation())
            assert action.shape == (6,) and action.dtype == np.float32
            follower.send_action(action)
            target = [1200, 2900, 2500, 1800, 3100, 3000]
            assert wait_until(lambda: [follower_sim.position(i) for i in IDS] == target)
            leader_sim.set_online(1, False)
            leader.bus.timeout_ms = ABSENT_TIMEOUT_MS
            assert leader.action(follower.latest_observation()) is None        # one failed read: hold
            with pytest.raises(RobotError, match="SO-101 leader on .*: motor 1 did not answer"):
                leader.action(follower.latest_observation())                   # max_failures in a row
            with pytest.raises(RobotError, match="6-D arm action"):
                SO101Leader(leader_sim.port).connect(RobotSpec("x", {}, Feature((2,)), 30.0))
        finally:
            leader.disconnect()
            follower.disconnect()
    assert leader_sim.error is None and follower_sim.error is None


# --- timing ----------------------------------------------------------------------------
def test_30hz_loop_latest_observation_is_fast(follower, sim):
    period = 1 / 30
    latencies, seqs = [], []
    t_next = time.monotonic()
    for k in range(200):
        t0 = time.perf_counter()
        obs = follower.latest_observation()
        latencies.append(time.perf_counter() - t0)
        seqs.append(obs.seq)
        follower.send_action(np.array([40 * np.sin(k / 20), 0, 0, 0, 0, 50]))
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    assert np.percentile(latencies, 99) < 0.002
    assert all(b >= a for a, b in zip(seqs, seqs[1:]))
    assert seqs[-1] - seqs[0] > 100                  # ~200 fresh reads at 30 Hz; generous for a loaded machine
    assert follower.read_errors == 0


def test_conformance_check_passes(sim):
    robot = SO101Follower(sim.port, timeout_ms=TIMEOUT_MS)
    settings = CheckSettings(move=True, seconds=1.0, settle_s=0.3, hold_s=0.5,
                             position=(STATE_KEY, 0, 6))
    items = check_robot(robot, settings)
    failed = [(i.name, i.measured, i.detail) for i in items if i.failed]
    assert failed == []
    assert {i.name for i in items if i.result == "pass"} >= {"connect", "spec", "reset", "clock", "stream", "latency",
                                                               "hold", "send_action", "non-finite", "disconnect"}
