"""SimRobot: the default task run in real time behind the Robot seam. Real MuJoCo, real
threads, the real monotonic clock; timing assertions have slack for a loaded 2-core machine."""
from __future__ import annotations

import threading
import time
from typing import ClassVar

import cadence.envs  # noqa: F401  (registers the task)
import gymnasium as gym
import numpy as np
import pytest
from cadence.envs import DEFAULT_TASK_ID
from cadence.envs.bimodal_reach import BimodalReachEnv
from cadence.hardware.robot import Feature, Robot, RobotError, RobotSpec
from cadence.hardware.sim_robot import SimRobot

from .waiting import wait_for as _wait_for

RATE = 50.0
PERIOD = 1.0 / RATE


class _FailingReach(BimodalReachEnv):
    def step(self, action):
        if self._steps == 3:
            raise RuntimeError("boom: the simulation diverged")
        return super().step(action)


class _NoHoldEnv(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": [], "render_fps": 10}
    observation_space = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (1,), np.float32)})
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)


for _id, _cls in (("cadence-test/FailingReach-v0", _FailingReach), ("cadence-test/NoHold-v0", _NoHoldEnv)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls)


@pytest.fixture
def make_robot():
    robots = []

    def make(**kwargs):
        kwargs.setdefault("rate_hz", RATE)
        robot = SimRobot(kwargs.pop("env_id", DEFAULT_TASK_ID), **kwargs)
        robots.append(robot)
        return robot

    yield make
    for robot in robots:
        try:
            robot.disconnect()
        except RobotError:
            pass


def _position(obs) -> np.ndarray:
    return obs.values["state"][:2].astype(np.float64)


def _wait_obs(robot, predicate, timeout_s=2.0):
    """The first latest observation that satisfies ``predicate``."""
    return _wait_for(lambda: next((o for o in [robot.latest_observation()] if predicate(o)), None), timeout_s)


def _sim_threads():
    return [t for t in threading.enumerate() if t.name.startswith("SimRobot[") and t.is_alive()]


def test_spec_from_the_env_spaces():
    robot = SimRobot(DEFAULT_TASK_ID)
    try:
        assert isinstance(robot, Robot)
        spec = robot.spec
        assert spec.name == f"sim:{DEFAULT_TASK_ID}"
        assert spec.rate_hz == 10.0                                     # the task's render_fps
        assert dict(spec.observation) == {"state": Feature((6,), "float32")}   # unbounded: no low/high
        assert spec.action == Feature((2,), "float32", (-1.5, -1.5), (1.5, 1.5))
        assert RobotSpec.from_json(spec.to_json()) == spec
    finally:
        robot.disconnect()
    images = SimRobot(DEFAULT_TASK_ID, env_kwargs={"image_size": 16}, rate_hz=25, name="sim")
    only_state = SimRobot(DEFAULT_TASK_ID, env_kwargs={"image_size": 16}, obs_keys=["state"])
    try:
        assert images.spec.name == "sim" and images.spec.rate_hz == 25.0
        assert images.spec.observation["image"] == Feature((16, 16, 3), "uint8")
        assert list(only_state.spec.observation) == ["state"]
    finally:
        images.disconnect()
        only_state.disconnect()
    with pytest.raises(ValueError, match="unknown obs_keys"):
        SimRobot(DEFAULT_TASK_ID, obs_keys=["depth"])
    with pytest.raises(ValueError, match="hold_action"):
        SimRobot("cadence-test/NoHold-v0")


def test_steps_in_real_time_on_a_fixed_grid_and_holds_without_commands(make_robot):
    robot = make_robot()
    first = robot.reset(seed=0)
    assert first.seq == 0 and robot.latest_observation() is first
    assert first.info == {**first.info, "is_success": False, "done": False, "terminated": False,
                          "truncated": False, "mode": "none", "collided": False}
    seen, ahead = {}, 0
    t_end = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        obs = robot.latest_observation()
        seen[obs.seq] = obs
        ahead += robot.steps > obs.seq          # a step computed whose state is not due yet
        time.sleep(0.003)
    last = max(seen)
    assert 42 <= last <= 51, (last, robot.overruns)            # about 50 steps in one second
    assert last + robot.overruns * 3 >= 47                    # what is missing, overruns explain
    for seq, obs in seen.items():                              # stamped on the grid: no drift
        assert obs.t_capture >= first.t_capture + seq * PERIOD - 1e-9
        if robot.overruns == 0:
            assert obs.t_capture == pytest.approx(first.t_capture + seq * PERIOD, abs=1e-9)
    assert last <= robot.steps <= last + 2
    assert ahead > 0                                           # states are computed before they are due
    assert robot.held_steps == robot.steps                     # no command yet: holding
    np.testing.assert_allclose(_position(seen[last]), _position(first), atol=1e-4)


def test_sensor_latency_delays_visibility(make_robot):
    latency = 0.1
    robot = make_robot(sensor_latency_s=latency)
    first = robot.reset(seed=0)
    lags = []
    t_end = time.monotonic() + 0.6
    while time.monotonic() < t_end:
        obs = robot.latest_observation()
        t_after = time.monotonic()
        if obs.seq > 0:                      # (reset's observation is returned by reset: visible)
            assert obs.t_capture + latency <= t_after, (obs.seq, t_after - obs.t_capture)
            lags.append(t_after - obs.t_capture)
        time.sleep(0.002)
    assert lags and max(lags) < latency + PERIOD + 0.05         # visible as soon as it may be
    assert robot.latest_observation().seq <= robot.steps - 3   # the newest steps are still in flight
    assert first.seq == 0


@pytest.mark.parametrize("latency", [0.0, 0.2])
def test_actuation_latency_delays_the_effect(make_robot, latency):
    robot = make_robot(actuation_latency_s=latency)
    start = _position(robot.reset(seed=0))
    time.sleep(0.1)
    t_sent = time.monotonic()
    applied = robot.send_action(np.array([1.0, start[1]], np.float32))
    np.testing.assert_allclose(applied, [1.0, start[1]], rtol=1e-6)
    moved = _wait_obs(robot, lambda o: _position(o)[0] > start[0] + 0.01)
    assert moved.t_capture >= t_sent + latency - 1e-9          # not before its latency
    assert moved.t_capture <= t_sent + latency + 2 * PERIOD + 0.03   # but right after it


def test_hold_keeps_the_agent_still(make_robot):
    robot = make_robot()
    start = _position(robot.reset(seed=0))
    robot.send_action(np.array([1.2, start[1]], np.float32))
    moving = _wait_obs(robot, lambda o: o.values["state"][2] > 0.3)
    robot.hold()
    held_before = robot.held_steps
    time.sleep(0.5)                                             # ~25 steps: 2.5 s of task time
    settled = robot.latest_observation()
    time.sleep(0.2)                                             # ~10 more steps
    later = robot.latest_observation()
    assert later.seq >= settled.seq + 5
    assert np.abs(_position(later) - _position(settled)).max() < 1e-4
    assert np.abs(later.values["state"][2:4]).max() < 1e-3
    # held near there (the hold latches a step or two after `moving` was observed, at speed)
    assert _position(moving)[0] - 0.05 < _position(later)[0] < _position(moving)[0] + 0.5
    assert robot.held_steps - held_before >= later.seq - moving.seq - 2


def test_send_action_validates_and_clips(make_robot):
    robot = make_robot()
    robot.reset(seed=0)
    for bad in (np.zeros(3), np.zeros((1, 2)), np.zeros(())):
        with pytest.raises(RobotError, match=r"shape"):
            robot.send_action(bad)
    for bad in ([np.nan, 0.0], [0.0, np.inf]):
        with pytest.raises(RobotError, match="finite"):
            robot.send_action(np.array(bad))
    with pytest.raises(RobotError, match="numeric"):
        robot.send_action(["a", "b"])
    applied = robot.send_action(np.array([5.0, -7.0]))
    assert applied.dtype == np.float32
    np.testing.assert_array_equal(applied, [1.5, -1.5])


def test_episode_end_stops_stepping_and_reset_restarts(make_robot):
    robot = make_robot(env_kwargs={"max_steps": 5})
    robot.reset(seed=0)
    final = _wait_obs(robot, lambda o: o.info["done"])
    assert final.seq == 5 and final.info["truncated"] and not final.info["terminated"]
    time.sleep(0.15)
    assert robot.steps == 5 and robot.latest_observation() is final   # stopped; final stays latest
    again = robot.reset(seed=1)
    assert again.seq == 0 and not again.info["done"]
    _wait_for(lambda: robot.latest_observation().seq >= 2)
    assert robot.steps >= 7


def test_reset_while_stepping_restarts_the_sequence(make_robot):
    robot = make_robot()
    robot.reset(seed=0)
    for seed in range(5):
        time.sleep(0.1)                                           # the old sequence runs 5 periods further
        overruns = robot.overruns
        before = robot.clock.now()
        first = robot.reset(seed=seed)
        assert first.seq == 0
        nxt = _wait_obs(robot, lambda o: o.seq >= 1)
        # counting from the reset: no more steps than the time since allows, however late this thread looks
        assert 1 <= nxt.seq <= (robot.clock.now() - before) / PERIOD + 1
        assert nxt.t_capture >= first.t_capture + nxt.seq * PERIOD - 1e-9   # on the new grid
        if robot.overruns == overruns:
            assert nxt.t_capture == pytest.approx(first.t_capture + nxt.seq * PERIOD, abs=1e-9)


def test_stepping_thread_error_surfaces(make_robot):
    robot = make_robot(env_id="cadence-test/FailingReach-v0")
    robot.reset(seed=0)
    time.sleep(0.2)
    with pytest.raises(RobotError, match="boom") as err:
        robot.latest_observation()
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(RobotError, match="boom"):
        robot.send_action(np.zeros(2, np.float32))
    with pytest.raises(RobotError, match="boom"):   # disconnect cleans up, then reports it too
        robot.disconnect()
    assert not _sim_threads()
    robot.connect()                                 # a fresh start works
    assert robot.reset(seed=0).seq == 0


def test_connect_is_idempotent_and_disconnect_stops_the_thread(make_robot):
    robot = make_robot()
    robot.connect()
    robot.connect()
    assert len(_sim_threads()) == 1
    robot.reset(seed=0)
    _wait_for(lambda: robot.latest_observation().seq >= 2)
    robot.disconnect()
    assert not _sim_threads()
    steps = robot.steps
    time.sleep(0.1)
    assert robot.steps == steps
    with pytest.raises(RobotError, match="not connected"):
        robot.send_action(np.zeros(2, np.float32))
    robot.disconnect()                              # twice is fine
    assert robot.reset(seed=0).seq == 0             # reset reconnects
    assert len(_sim_threads()) == 1
