"""The replay robot: recorded observations on the recorded clock, actions scored against the recording."""
import numpy as np
import pytest

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.hardware.clock import SimClock
from cadence.hardware.replay_robot import ReplayRobot
from cadence.hardware.robot import RobotError

FPS = 10.0
LENGTHS = [6, 4, 5]


@pytest.fixture()
def store(tmp_path):
    s = EpisodeStore.create(tmp_path / "rec.zarr", fps=FPS)
    for e, n in enumerate(LENGTHS):
        steps = np.arange(n, dtype=np.float32)
        s.append_episode({"state": np.stack([steps, np.full(n, e, np.float32)], 1),
                          "action": np.stack([steps * 0.1, -steps * 0.1], 1).astype(np.float32),
                          "image": np.full((n, 4, 4, 3), e, np.uint8)})
    return s.path


def test_observations_follow_the_recording_on_its_clock(store):
    clock = SimClock(100.0)
    robot = ReplayRobot(store, ["state", "image"], episodes=[2, 0], clock=clock)
    assert robot.spec.rate_hz == FPS and robot.spec.observation["image"].shape == (4, 4, 3)
    robot.connect()
    first = robot.reset()
    assert first.values["state"].tolist() == [0, 2] and first.t_capture == 100.0 and first.seq == 0
    clock.advance(0.25)                                  # steps 0, 1, 2 have happened
    obs = robot.latest_observation()
    assert obs.seq == 2 and obs.values["state"].tolist() == [2, 2] and obs.t_capture == pytest.approx(100.2)
    assert not obs.info["done"]
    clock.advance(10.0)                                  # past the end: the last step, done
    last = robot.latest_observation()
    assert last.seq == LENGTHS[2] - 1 and last.info["done"]
    assert robot.reset().values["state"].tolist() == [0, 0]      # the next episode listed
    assert robot.reset().values["state"].tolist() == [0, 2]      # and round again


def test_each_action_is_compared_with_the_recorded_action_of_the_step_it_is_for(store):
    clock = SimClock(0.0)
    robot = ReplayRobot(store, ["state"], episodes=[0], clock=clock)
    robot.connect()
    robot.reset()
    recorded = np.stack([np.arange(6) * 0.1, -np.arange(6) * 0.1], 1)
    for k in range(5):                     # a tick a quarter period after step k sends step k + 1's action
        clock.sleep_until((k + 0.25) / FPS)
        robot.latest_observation()
        if k != 2:                          # one step left without an action (a hold)
            robot.send_action(recorded[k + 1] + [0.5, 0.0])
    clock.sleep_until(0.55)
    report = robot.report()
    assert report["steps_compared"] == 4 and report["steps_without_action"] == 1
    assert report["action_l1_per_dim"] == pytest.approx([0.5, 0.0], abs=1e-6)
    assert report["action_l1"] == pytest.approx(0.25, abs=1e-6)
    robot.reset()                            # a finished episode stays in the report
    assert robot.report()["steps_compared"] == 4


def test_bad_requests_are_refused(store):
    with pytest.raises(StoreError, match="episodes"):
        ReplayRobot(store, ["state"], episodes=[7])
    with pytest.raises(StoreError, match="wrist"):
        ReplayRobot(store, ["wrist"])
    robot = ReplayRobot(store, ["state"])
    with pytest.raises(RobotError, match="not connected"):
        robot.reset()
    robot.connect()
    robot.reset()
    with pytest.raises(RobotError, match="finite"):
        robot.send_action(np.array([np.nan, 0.0]))
    with pytest.raises(RobotError, match="shape"):
        robot.send_action(np.zeros(3))
