"""The keyboard teleop typed on a real pseudo-terminal, driving the docs' example driver: presses
step the target by the documented amount and clip at the limits, the target starts at the
measured position, and a recorded episode ends on the record keys read from the same terminal."""
import os
import threading
import time

import numpy as np
import pytest

from cadence.hardware.keyboard_teleop import KEY_PAIRS, KeyboardTeleop
from cadence.hardware.record_keys import RecordKeys
from cadence.hardware.recorder import record_episode
from cadence.hardware.robot import Feature, Observation, RobotError, RobotSpec
from cadence.hardware.teleop import Teleop
from cadence.hardware.terminal_keys import TerminalKeys

from .faulty_drivers import PointRobot

WAIT_S = 5.0
STEP = 10.0 * 2.0 / 100                 # speed 10 on the point robot's range of 2: 0.2 per press


@pytest.fixture
def terminal():
    master, slave = os.openpty()
    keys = TerminalKeys(slave).open()
    yield master, keys
    keys.close()
    os.close(master)
    os.close(slave)


@pytest.fixture
def robot():
    robot = PointRobot(rate_hz=50.0, time_constant_s=0.02)
    robot.connect()
    yield robot
    robot.disconnect()


def _until(teleop, robot, expected, timeout=WAIT_S):
    """Call ``action`` each tick until it returns ``expected``; the last command."""
    deadline = time.monotonic() + timeout
    while True:
        command = teleop.action(robot.latest_observation())
        if np.allclose(command, expected, atol=1e-6) or time.monotonic() > deadline:
            return command
        time.sleep(0.01)


def test_presses_step_the_target_and_clip_at_the_limits(terminal, robot):
    master, keys = terminal
    teleop = KeyboardTeleop(speed=10.0, keys=keys)
    assert isinstance(teleop, Teleop)
    teleop.connect(robot.spec)
    try:
        teleop.reset(robot.reset())
        command = teleop.action(robot.latest_observation())
        assert command.dtype == np.float32 and command.tolist() == [0.0, 0.0]
        os.write(master, b"ww")
        assert _until(teleop, robot, [2 * STEP, 0]).tolist() == pytest.approx([2 * STEP, 0])
        os.write(master, b"dzS")                # d: element 1 down; z unmapped; S as s
        assert _until(teleop, robot, [STEP, -STEP]).tolist() == pytest.approx([STEP, -STEP])
        os.write(master, b"a" * 30)             # 6 units of presses: stops at the limit
        assert _until(teleop, robot, [STEP, 1.0]).tolist() == pytest.approx([STEP, 1.0])
        os.write(master, b"d")
        assert _until(teleop, robot, [STEP, 1.0 - STEP]).tolist() == pytest.approx([STEP, 1.0 - STEP])
        assert teleop.action(robot.latest_observation()) is not None   # holds: the same target again
    finally:
        teleop.disconnect()


def test_the_robot_follows_and_reset_starts_from_the_measured_position(terminal, robot):
    master, keys = terminal
    teleop = KeyboardTeleop(speed=25.0, keys=keys)         # 0.5 per press
    teleop.connect(robot.spec)
    try:
        teleop.reset(robot.reset())
        os.write(master, b"ww")
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            robot.send_action(teleop.action(robot.latest_observation()))
            if robot.latest_observation().values["observation.state"][0] > 0.99:
                break
            time.sleep(0.01)
        assert robot.latest_observation().values["observation.state"][0] > 0.99
        moved = Observation({"observation.state": np.array([0.3, -2.0], np.float32)}, time.monotonic(), 1)
        os.write(master, b"w")                  # pressed between episodes: dropped at reset
        time.sleep(0.2)
        teleop.reset(moved)
        assert teleop.action(moved).tolist() == pytest.approx([0.3, -1.0])   # measured, clipped
    finally:
        teleop.disconnect()


def test_a_recorded_episode_ends_on_the_record_keys_from_the_same_terminal(terminal, robot):
    master, keys = terminal
    teleop = KeyboardTeleop(speed=10.0, keys=keys)
    decide = RecordKeys(keys)
    teleop.connect(robot.spec)

    ticking = threading.Event()

    def person():
        ticking.wait(WAIT_S)                      # after reset: presses before it are dropped
        os.write(master, b"www")
        deadline = time.monotonic() + WAIT_S      # wait until the robot moved, then keep the episode
        while time.monotonic() < deadline:
            obs = robot.latest_observation()
            if obs is not None and obs.values["observation.state"][0] > 2 * STEP:
                break
            time.sleep(0.01)
        os.write(master, b"\x1b[C")

    helper = threading.Thread(target=person)
    helper.start()
    try:
        recording = record_episode(robot, teleop, 50.0, decisions=decide.poll,
                                   max_ticks=int(50 * 2 * WAIT_S), on_tick=lambda k: ticking.set())
    finally:
        helper.join()
        teleop.disconnect()
    assert recording.ended_by == "keep"
    actions = recording.steps["action"][:, 0]
    assert actions[0] == 0.0 and actions[-1] == pytest.approx(3 * STEP)
    assert np.all(np.diff(actions) >= 0)
    assert recording.held == 0                  # a command every tick after reset


def test_explicit_position_and_more_elements_than_key_pairs(terminal):
    master, keys = terminal
    n = len(KEY_PAIRS) + 1
    box = Feature((n,), "float32", (0.0,) * n, (100.0,) * n)
    spec = RobotSpec("arm", {"state": Feature((2 * n,)), "joints": Feature((n,)), "goal": Feature((n,))}, box, 30.0)
    with pytest.raises(RobotError, match="position=") as err:
        KeyboardTeleop(keys=keys).connect(spec)            # two observations shaped like the action
    assert "\n" not in str(err.value)
    teleop = KeyboardTeleop(speed=1.0, position=["state", n, 2 * n], keys=keys)
    teleop.connect(spec)
    try:
        state = np.concatenate([np.full(n, -1.0), np.arange(n) * 10.0]).astype(np.float32)
        obs = Observation({"state": state, "joints": state[:n], "goal": state[:n]}, time.monotonic(), 1)
        teleop.reset(obs)
        start = np.arange(n) * 10.0
        os.write(master, b"wdrgyjaa")
        expected = start + np.array([1, 1, 1, -1, 1, -1, 0.0])   # the 7th element is unmapped
        deadline = time.monotonic() + WAIT_S
        command = teleop.action(obs)
        while not np.allclose(command, expected) and time.monotonic() < deadline:
            time.sleep(0.01)
            command = teleop.action(obs)
        assert command.tolist() == pytest.approx(expected.tolist())
    finally:
        teleop.disconnect()


def test_refusals_are_one_line():
    spec = PointRobot().spec
    r, w = os.pipe()
    try:
        with pytest.raises(RobotError, match="terminal") as err:
            KeyboardTeleop(keys=TerminalKeys(r)).connect(spec)     # a pipe, not a terminal
        assert "\n" not in str(err.value)
    finally:
        os.close(r)
        os.close(w)
    unbounded = RobotSpec("free", spec.observation, Feature((2,)), 30.0)
    with pytest.raises(RobotError, match="limits"):
        KeyboardTeleop().connect(unbounded)
    with pytest.raises(RobotError, match="holds 3 values"):
        KeyboardTeleop(position=["observation.state", 0, 3]).connect(spec)
    with pytest.raises(RobotError, match="speed"):
        KeyboardTeleop(speed=0)
