"""The gamepad teleop reading Linux joystick events from a real FIFO (the same 8-byte records
``/dev/input/js*`` delivers): stick motion moves the target at the right sign and speed, the
deadzone holds it still, init events set the state, buttons are tracked, the target clips at the
limits, and a missing device is a one-line error naming it."""
import os
import struct
import time

import numpy as np
import pytest

from cadence.hardware.gamepad_teleop import MAX_DT_S, GamepadTeleop
from cadence.hardware.robot import RobotError
from cadence.hardware.teleop import Teleop

from .faulty_drivers import PointRobot

WAIT_S = 5.0
BUTTON, AXIS, INIT = 0x01, 0x02, 0x80


def _event(kind, number, value, time_ms=0):
    return struct.pack("<IhBB", time_ms, value, kind, number)


def _wait(condition, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


@pytest.fixture
def gamepad(tmp_path):
    """A connected teleop on a FIFO, its write end, and the point robot (range 2 per element)."""
    path = tmp_path / "js0"
    os.mkfifo(path)
    robot = PointRobot()
    created = []

    def make(**options):
        teleop = GamepadTeleop(device=str(path), **options)
        assert isinstance(teleop, Teleop)
        teleop.connect(robot.spec)               # opens the read end without blocking
        writer = os.open(path, os.O_WRONLY)      # a reader is there: does not block
        created.append((teleop, writer))
        teleop.reset(robot.reset())
        return teleop, writer, robot

    yield make
    for teleop, writer in created:
        teleop.disconnect()
        os.close(writer)


def _timed_move(teleop, robot, pause=0.05):
    """The target's change over one ``pause`` between two action calls, with the bounds of the
    time the teleop can have measured between them (its dt is capped at MAX_DT_S)."""
    obs = robot.latest_observation()
    t0 = time.monotonic()
    a = teleop.action(obs)
    t1 = time.monotonic()
    time.sleep(pause)
    t2 = time.monotonic()
    b = teleop.action(obs)
    t3 = time.monotonic()
    return b - a, min(MAX_DT_S, t2 - t1), min(MAX_DT_S, t3 - t0)


def test_stick_motion_moves_the_target_at_its_sign_and_speed(gamepad):
    teleop, writer, robot = gamepad(speed=0.5, deadzone=0.1)
    os.write(writer, _event(AXIS, 0, 32767) + _event(AXIS, 1, -32767))
    assert _wait(lambda: teleop.axis_values() == {0: 32767, 1: -32767})
    teleop.action(robot.latest_observation())
    delta, dt_lo, dt_hi = _timed_move(teleop, robot)
    rate = 0.5 * 2.0                             # speed x range per second at full deflection
    assert rate * dt_lo - 1e-6 <= delta[0] <= rate * dt_hi + 1e-6
    assert -rate * dt_hi - 1e-6 <= delta[1] <= -rate * dt_lo + 1e-6
    assert delta[0] > 0 > delta[1]

    os.write(writer, _event(AXIS, 0, int(0.55 * 32767)) + _event(AXIS, 1, 0))   # half speed past the deadzone
    assert _wait(lambda: teleop.axis_values() == {0: int(0.55 * 32767), 1: 0})
    teleop.action(robot.latest_observation())
    delta, dt_lo, dt_hi = _timed_move(teleop, robot)
    assert 0.5 * rate * dt_lo * 0.99 <= delta[0] <= 0.5 * rate * dt_hi * 1.01
    assert delta[1] == 0.0


def test_the_deadzone_and_centred_sticks_hold_still(gamepad):
    teleop, writer, robot = gamepad(speed=1.0, deadzone=0.1)
    os.write(writer, _event(AXIS, 0, 3000) + _event(AXIS, 1, -3000))           # inside the 10% deadzone
    assert _wait(lambda: teleop.axis_values() == {0: 3000, 1: -3000})
    obs = robot.latest_observation()
    first = teleop.action(obs)
    for _ in range(5):
        time.sleep(0.02)
        assert teleop.action(obs).tolist() == first.tolist() == [0.0, 0.0]


def test_init_events_set_the_state_and_buttons_are_tracked(gamepad):
    teleop, writer, robot = gamepad(speed=0.5, axes=[2, 0])
    os.write(writer, _event(INIT | BUTTON, 3, 1) + _event(INIT | BUTTON, 0, 0) + _event(INIT | AXIS, 2, -32767)
             + _event(INIT | AXIS, 0, 0))
    assert _wait(lambda: teleop.buttons() == [3] and teleop.axis_values() == {2: -32767, 0: 0})
    os.write(writer, _event(BUTTON, 1, 1))
    assert _wait(lambda: teleop.buttons() == [1, 3])
    os.write(writer, _event(BUTTON, 3, 0))
    assert _wait(lambda: teleop.buttons() == [1])
    teleop.action(robot.latest_observation())
    delta, dt_lo, dt_hi = _timed_move(teleop, robot)
    assert -1.0 * dt_hi - 1e-6 <= delta[0] <= -1.0 * dt_lo + 1e-6       # element 0 follows axis 2
    assert delta[1] == 0.0                                              # element 1: axis 0, centred


def test_a_record_split_across_writes_and_the_limits(gamepad):
    teleop, writer, robot = gamepad(speed=2.0)
    record = _event(AXIS, 1, 32767)
    os.write(writer, record[:5])
    time.sleep(0.05)
    assert teleop.axis_values() == {}
    os.write(writer, record[5:])
    assert _wait(lambda: teleop.axis_values() == {1: 32767})
    obs = robot.latest_observation()
    assert _wait(lambda: teleop.action(obs)[1] == 1.0)                 # 4 units/s: at the limit, and stays
    command = teleop.action(obs)
    assert command.dtype == np.float32 and command.tolist() == [0.0, 1.0]


def test_the_target_starts_at_the_measured_position_and_a_closed_device_holds(tmp_path):
    path = tmp_path / "js0"
    os.mkfifo(path)
    robot = PointRobot(rate_hz=50.0, time_constant_s=0.02)
    robot.connect()
    teleop = GamepadTeleop(device=str(path), speed=1.0)
    teleop.connect(robot.spec)
    writer = os.open(path, os.O_WRONLY)
    try:
        teleop.reset(robot.reset())
        os.write(writer, _event(AXIS, 0, 32767))
        assert _wait(lambda: teleop.axis_values() == {0: 32767})
        assert _wait(lambda: robot.send_action(teleop.action(robot.latest_observation()))[0] == 1.0)
        assert _wait(lambda: robot.latest_observation().values["observation.state"][0] > 0.99)
        os.close(writer)                                                # the device goes away
        writer = None
        assert _wait(lambda: teleop.error is not None) and str(path) in teleop.error
        assert teleop.axis_values() == {} and teleop.buttons() == []
        obs = robot.latest_observation()
        teleop.reset(obs)                                               # from where the robot is
        start = teleop.action(obs)
        assert start[0] > 0.99 and start[1] == 0.0
        time.sleep(0.05)
        assert teleop.action(obs).tolist() == start.tolist()           # centred: holds
    finally:
        if writer is not None:
            os.close(writer)
        teleop.disconnect()
        robot.disconnect()


def test_a_missing_device_is_a_one_line_error_naming_it(tmp_path):
    missing = tmp_path / "js7"
    with pytest.raises(RobotError, match=str(missing)) as err:
        GamepadTeleop(device=str(missing)).connect(PointRobot().spec)
    assert "\n" not in str(err.value)
    with pytest.raises(RobotError, match="axes"):
        GamepadTeleop(device=str(missing), axes=[0, 1, 2]).connect(PointRobot().spec)
    with pytest.raises(RobotError, match="deadzone"):
        GamepadTeleop(deadzone=1.0)
