"""SafetyFilter: clamps, watchdog, emergency stop. The filter is under test; it wraps either a
small concrete robot defined here (whose sensor and timing the test controls) or a real
SimRobot of the default task."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from cadence.envs import DEFAULT_TASK_ID
from cadence.hardware.robot import Feature, Observation, Robot, RobotError, RobotSpec
from cadence.hardware.safety import SafetyFilter, SafetyLimits
from cadence.hardware.sim_robot import SimRobot

TIMEOUT = 0.2


class PointRobot:
    """A 2-D position-target robot that moves to each command at once. Its sensor stamps a
    fresh observation on every read while ``live``; otherwise the last one stays the latest."""

    def __init__(self, send_delay_s: float = 0.0):
        self.spec = RobotSpec("point", {"state": Feature((4,))},
                              Feature((2,), "float32", (-1.0, -1.0), (1.0, 1.0)), 50.0)
        self.position = np.zeros(2)
        self.live = True
        self.send_delay_s = send_delay_s
        self.events: list[tuple[str, object]] = []   # ("send", action) / ("hold", None), in order
        self.sending = threading.Event()
        self._obs: Observation | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def connect(self) -> None:
        pass

    def reset(self, seed=None) -> Observation:
        self.position = np.zeros(2)
        self._seq = -1
        return self._publish()

    def _publish(self) -> Observation:
        self._seq += 1
        self._obs = Observation({"state": np.r_[self.position, 0.0, 0.0].astype(np.float32)},
                                time.monotonic(), self._seq)
        return self._obs

    def latest_observation(self):
        with self._lock:
            return self._publish() if self.live else self._obs

    def send_action(self, action):
        self.sending.set()
        time.sleep(self.send_delay_s)
        with self._lock:
            self.events.append(("send", np.array(action)))
            self.position = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
            return self.position.astype(np.float32)

    def hold(self) -> None:
        with self._lock:
            self.events.append(("hold", None))

    def disconnect(self) -> None:
        pass

    def sends(self):
        return [e for e in self.events if e[0] == "send"]


def _filter(robot=None, watchdog_timeout_s=None, **limits):
    robot = robot or PointRobot()
    f = SafetyFilter(robot, SafetyLimits(**limits), watchdog_timeout_s=watchdog_timeout_s)
    f.connect()
    f.reset()
    return f, robot


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def _wait_for(predicate, timeout_s=2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("condition not reached in time")


def test_is_a_robot_with_the_same_spec():
    f, robot = _filter()
    assert isinstance(f, Robot) and f.spec is robot.spec
    np.testing.assert_array_equal(f.limits.action_low, [-1, -1])   # from the spec
    f.disconnect()


def test_clamps_to_action_limits_and_counts(caplog):
    f, robot = _filter(action_low=[-0.5, -1.0], action_high=[0.5, 1.0])
    with caplog.at_level(logging.WARNING, logger="cadence.hardware.safety"):
        _close(f.send_action(np.array([2.0, -3.0])), [0.5, -1.0])
        _close(f.send_action(np.array([-0.9, 0.2])), [-0.5, 0.2])
        _close(f.send_action(np.array([0.1, 0.2])), [0.1, 0.2])
    _close(robot.sends()[0][1], [0.5, -1.0])   # what reached the robot
    assert f.clamp_counts == {"action_limits": 2, "max_delta": 0, "workspace": 0}
    assert len([r for r in caplog.records if "action_limits" in r.getMessage()]) == 1   # logged once
    with pytest.raises(RobotError, match="shape"):
        f.send_action(np.zeros(3))
    with pytest.raises(RobotError, match="finite"):
        f.send_action(np.array([np.nan, 0.0]))
    assert robot.events[-1] == ("hold", None)                        # a NaN command holds
    f.disconnect()


def test_max_delta_from_last_command_and_from_measured_position_after_hold():
    f, robot = _filter(max_delta=0.1, position_obs=("state", 0, 2))
    robot.position = np.array([0.2, 0.3])                            # measured at start
    _close(f.send_action(np.array([1.0, -1.0])), [0.3, 0.2])
    _close(f.send_action(np.array([1.0, -1.0])), [0.4, 0.1])   # from last command
    _close(f.send_action(np.array([0.45, 0.1])), [0.45, 0.1])  # within: untouched
    f.hold()
    robot.position = np.array([-0.5, -0.5])                          # pushed while holding
    _close(f.send_action(np.array([0.45, 0.1])), [-0.4, -0.4])
    assert f.clamp_counts["max_delta"] == 3
    f.disconnect()


def test_a_command_that_is_not_finite_never_reaches_the_robot():
    f, robot = _filter(max_delta=0.1, position_obs=("state", 0, 2))
    robot.position = np.array([np.nan, 0.0])                        # a damaged position reading
    with pytest.raises(RobotError, match="the measured position is not finite.*robot held"):
        f.send_action(np.array([0.05, 0.05]))                        # a finite action
    assert robot.sends() == [] and robot.events[-1] == ("hold", None)
    f.disconnect()
    unlimited = PointRobot()
    unlimited.spec = RobotSpec("point", {"state": Feature((4,))}, Feature((2,), "float32"), 50.0)   # no action limits
    f, robot = _filter(unlimited)
    with pytest.raises(RobotError, match="beyond float32\\); robot held"):
        f.send_action(np.array([1e39, 0.0]))                         # finite in float64, infinite in float32
    assert robot.sends() == [] and robot.events[-1] == ("hold", None)
    f.disconnect()


def test_max_delta_after_a_reset_is_measured_from_where_the_reset_left_the_robot():
    f, robot = _filter(max_delta=0.1, position_obs=("state", 0, 2))
    _close(f.send_action(np.array([0.9, 0.9])), [0.1, 0.1])
    f.latest_observation()                                           # the loop (or the server) reads each tick
    robot.live = False                                               # readings only at reset: it must be used
    robot.reset = lambda seed=None: (setattr(robot, "position", np.array([0.9, 0.9])), robot._publish())[1]
    f.reset()
    _close(f.send_action(np.array([0.9, 0.9])), [0.9, 0.9])     # no jump back toward the old episode's position
    assert f.clamp_counts["max_delta"] == 1
    f.disconnect()


def test_max_delta_without_position_obs_starts_unclamped_then_keeps_the_last_command_as_reference():
    f, robot = _filter(max_delta=np.array([0.1, 0.2]))
    _close(f.send_action(np.array([0.9, 0.9])), [0.9, 0.9])   # no reference yet
    _close(f.send_action(np.array([0.0, 0.0])), [0.8, 0.7])
    f.hold()                                                  # no measured position: the last command
    _close(f.send_action(np.array([-0.9, -0.9])), [0.7, 0.5])
    _close([a for _, a in robot.sends()], [[0.9, 0.9], [0.8, 0.7], [0.7, 0.5]])
    f.disconnect()


def test_workspace_is_applied_last():
    f, robot = _filter(max_delta=0.5, workspace_low=[-0.2, -1.0], workspace_high=[0.2, 1.0])
    _close(f.send_action(np.array([0.9, 0.9])), [0.2, 0.9])
    _close(f.send_action(np.array([-0.9, 0.0])), [-0.2, 0.4])
    assert f.clamp_counts == {"action_limits": 0, "max_delta": 1, "workspace": 2}
    _close(robot.sends()[-1][1], [-0.2, 0.4])
    f.disconnect()


def test_a_robot_that_learns_its_spec_at_connect():
    class LateSpecRobot(PointRobot):          # like a remote robot: the spec comes with the connection
        def __init__(self):
            super().__init__()
            self._spec, self.spec = self.spec, None

        def connect(self):
            self.spec = self._spec

    robot = LateSpecRobot()
    f = SafetyFilter(robot, SafetyLimits(workspace_low=[-0.5, -0.5], workspace_high=[0.5, 0.5]),
                     watchdog_timeout_s=None)
    with pytest.raises(RobotError, match="not connected"):
        f.send_action(np.zeros(2))
    f.connect()
    assert f.spec is robot.spec
    f.reset()
    _close(f.send_action(np.array([0.9, 0.0])), [0.5, 0.0])
    bad = SafetyFilter(LateSpecRobot(), SafetyLimits(position_obs=("pos", 0, 2)))
    with pytest.raises(ValueError, match="not an observation"):
        bad.connect()


@pytest.mark.parametrize("limits, message", [
    ({"action_low": [1.0, 1.0], "action_high": [0.0, 0.0]}, "action_low must be <= action_high"),
    ({"action_low": [0.0, 0.0, 0.0]}, r"shape \(2,\)"),
    ({"max_delta": 0.0}, "max_delta must be > 0"),
    ({"workspace_low": [0, 0]}, "both workspace_low and workspace_high"),
    ({"workspace_low": [0.5, 0], "workspace_high": [0, 1]}, "workspace_low must be <= workspace_high"),
    ({"position_obs": ("pos", 0, 2)}, "not an observation"),
    ({"position_obs": ("state", 0, 3)}, "must select 2 elements"),
    ({"position_obs": ("state", 3, 5)}, "must select 2 elements"),
])
def test_limits_are_validated(limits, message):
    with pytest.raises(ValueError, match=message):
        SafetyFilter(PointRobot(), SafetyLimits(**limits))


def test_watchdog_trips_on_a_silent_sensor_and_rearms(caplog):
    f, robot = _filter(watchdog_timeout_s=TIMEOUT, position_obs=("state", 0, 2))
    f.send_action(np.array([0.3, 0.3]))
    for _ in range(4):                        # armed, and everything fresh
        time.sleep(TIMEOUT / 4)
        f.heartbeat()
    assert not f.tripped
    robot.live = False                        # the sensor goes silent
    with caplog.at_level(logging.INFO, logger="cadence.hardware.safety"):
        t_last = robot.latest_observation().t_capture
        while not f.tripped:
            f.heartbeat()                     # the loop itself is alive
            time.sleep(0.01)
            assert time.monotonic() - t_last < 1.0
        assert time.monotonic() - t_last >= TIMEOUT
        assert "observation" in f.trip_reason
        assert robot.events[-1] == ("hold", None)
        n_events = len(robot.events)
        reported = f.send_action(np.array([-0.5, -0.5]))    # refused: not forwarded, robot held
        _close(reported, [0.3, 0.3])    # the hold: the measured position
        time.sleep(3 * TIMEOUT / 5)
        f.heartbeat()
        assert f.tripped and len(robot.events) == n_events  # held once, nothing forwarded
        robot.live = True                                   # the sensor is back
        _wait_for(lambda: (f.heartbeat(), not f.tripped)[1])
    messages = [r.getMessage() for r in caplog.records]
    assert any("tripped" in m for m in messages) and any("re-armed" in m for m in messages)
    _close(f.send_action(np.array([-0.5, -0.5])), [-0.5, -0.5])
    _close(robot.sends()[-1][1], [-0.5, -0.5])
    f.disconnect()


def test_watchdog_trips_on_an_observation_without_a_capture_time():
    f, robot = _filter(watchdog_timeout_s=TIMEOUT)
    f.send_action(np.array([0.3, 0.3]))
    robot.latest_observation = lambda: Observation({"state": np.zeros(4, np.float32)}, float("nan"), 0)
    _wait_for(lambda: (f.heartbeat(), f.tripped)[1])
    assert "capture time is nan" in f.trip_reason and robot.events[-1] == ("hold", None)
    f.disconnect()


def test_watchdog_trips_when_the_loop_stalls_and_rearms_on_heartbeat():
    f, robot = _filter(watchdog_timeout_s=TIMEOUT)
    time.sleep(2 * TIMEOUT)
    assert not f.tripped                       # disarmed until the loop starts
    t_before = time.monotonic()                # the watchdog's clock starts inside send_action, after this
    f.send_action(np.array([0.1, 0.1]))
    _wait_for(lambda: f.tripped)
    assert time.monotonic() - t_before >= TIMEOUT
    assert "heartbeat" in f.trip_reason and robot.events[-1] == ("hold", None)
    f.heartbeat()
    _wait_for(lambda: not f.tripped, timeout_s=TIMEOUT)
    f.send_action(np.array([0.2, 0.2]))
    _close(robot.sends()[-1][1], [0.2, 0.2])
    f.disconnect()
    time.sleep(2 * TIMEOUT)
    assert not f.tripped                       # the watchdog is gone with the connection


def test_watchdog_holds_a_sim_robot_whose_episode_ended():
    sim = SimRobot(DEFAULT_TASK_ID, env_kwargs={"max_steps": 5}, rate_hz=50)
    f = SafetyFilter(sim, SafetyLimits(max_delta=0.05, position_obs=("state", 0, 2)),
                     watchdog_timeout_s=TIMEOUT)
    try:
        f.connect()
        start = f.reset(seed=0).values["state"][:2]
        applied = f.send_action(start + np.array([1.0, 0.0], np.float32))
        _close(applied, start + [0.05, 0.0])   # first step: from measured
        _wait_for(lambda: (f.heartbeat(), f.tripped)[1])
        assert "observation" in f.trip_reason and f.latest_observation().info["done"]
        assert f.reset(seed=1).seq == 0 and not f.tripped                     # a new episode re-arms
    finally:
        f.disconnect()


def test_estop_holds_latches_and_clears():
    f, robot = _filter(watchdog_timeout_s=None)
    f.send_action(np.array([0.1, 0.1]))
    f.estop("operator")
    assert f.estopped and f.estop_reason == "operator"
    assert robot.events[-1] == ("hold", None)
    n_sends = len(robot.sends())
    for _ in range(3):
        reported = f.send_action(np.array([0.5, 0.5]))
        _close(reported, [0.1, 0.1])   # no position_obs: the last command
    assert len(robot.sends()) == n_sends
    with pytest.raises(RobotError, match="emergency stop"):
        f.reset()
    f.clear_estop()
    assert not f.estopped
    _close(f.send_action(np.array([0.5, 0.5])), [0.5, 0.5])
    assert len(robot.sends()) == n_sends + 1
    f.disconnect()
    assert robot.events[-1] == ("hold", None)                  # disconnect holds


def test_estop_wins_against_a_concurrent_send_action():
    robot = PointRobot(send_delay_s=0.05)
    f, _ = _filter(robot)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            f.send_action(np.array([0.4, 0.4]))

    sender = threading.Thread(target=loop)
    sender.start()
    try:
        robot.sending.clear()
        assert robot.sending.wait(1.0)             # a send_action is inside the robot now
        n_before = len(robot.events)
        t0 = time.monotonic()
        f.estop("race")
        took = time.monotonic() - t0
        n_events = len(robot.events)
        kinds = [kind for kind, _ in robot.events[n_before:]]
        # the immediate hold landed while the in-flight command was still being sent; then
        # only holds: the in-flight command is overridden and nothing else got through
        assert kinds[:2] == ["hold", "send"] and set(kinds[2:]) == {"hold"}, kinds
        assert took < 0.05 + 0.04                  # waited for the in-flight command only
        time.sleep(0.2)                            # the sender keeps trying
        assert robot.events[n_events:] == []       # nothing forwarded after estop returned
    finally:
        stop.set()
        sender.join()
    f.disconnect()
