"""One teleoperated episode through the robot seam: the simulated robot in real time, the
scripted teleoperator, the person's decisions."""
import numpy as np

from cadence.hardware.recorder import record_episode
from cadence.hardware.scripted_teleop import ScriptedTeleop
from cadence.hardware.sim_robot import SimRobot

RATE = 50.0


def _robot():
    robot = SimRobot("cadence/BimodalReach-v0", rate_hz=RATE, obs_keys=["state"])
    robot.connect()
    return robot


def test_an_episode_pairs_each_observation_with_the_applied_action_until_done():
    robot, teleop = _robot(), ScriptedTeleop(seed=3)
    try:
        teleop.connect(robot.spec)
        rec = record_episode(robot, teleop, RATE, seed=7)
    finally:
        robot.disconnect()
    assert rec.ended_by == "done" and rec.info["is_success"] is True
    n = rec.length
    assert 30 < n < 120 and rec.steps["state"].shape == (n, 6) and rec.steps["action"].shape == (n, 2)
    assert rec.steps["action"].dtype == np.float32
    t = rec.steps["timestamp"]
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    # most ticks saw a new observation: the recording is at the robot's rate, not a multiple of it
    assert rec.repeated < n / 4, rec
    # the agent followed the commands: its final position is near the goal
    assert np.linalg.norm(rec.steps["state"][-1, :2] - rec.steps["state"][-1, 4:6]) < 0.2


def test_a_decision_ends_the_episode_and_ticks_without_a_command_are_not_recorded():
    class Hesitant(ScriptedTeleop):
        calls = 0

        def action(self, observation):
            Hesitant.calls += 1
            return None if Hesitant.calls % 2 else super().action(observation)

    robot, teleop = _robot(), Hesitant(seed=0)
    ticks = []
    try:
        rec = record_episode(robot, teleop, RATE, seed=1, on_tick=ticks.append,
                             decisions=lambda: ["rerecord"] if len(ticks) >= 10 else [])
    finally:
        robot.disconnect()
    assert rec.ended_by == "rerecord" and rec.ticks == 10
    assert rec.held == 5 and rec.length == 5


def test_max_ticks_bounds_an_episode():
    robot, teleop = _robot(), ScriptedTeleop(seed=0)
    try:
        rec = record_episode(robot, teleop, RATE, seed=2, max_ticks=8)
    finally:
        robot.disconnect()
    assert rec.ended_by == "max_ticks" and rec.length == 8
