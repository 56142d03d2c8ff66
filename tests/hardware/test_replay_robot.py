"""The replay robot: recorded observations on the recorded clock, actions scored against the recording."""
import shutil

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


def test_derived_keys_are_served_sliced_and_the_action_lead_picks_the_step(store):
    clock = SimClock(0.0)
    robot = ReplayRobot(store, ["pos"], episodes=[1], clock=clock, slices={"pos": ["state", 1, 2]}, lead_s=0.06)
    assert robot.spec.observation["pos"].shape == (1,)
    robot.connect()
    assert robot.reset().values["pos"].tolist() == [1.0]
    clock.sleep_until(0.125)                   # with a 60 ms lead, the next step it can reach is step 2
    robot.send_action(np.array([0.2, -0.2]))
    clock.sleep_until(0.25)
    report = robot.report()
    assert report["steps_compared"] == 1 and report["action_l1"] == pytest.approx(0.0, abs=1e-6)
    robot.reset()                              # the episode (4 steps) was left before its end
    assert robot.report()["episodes_cut_short"] == 1
    with pytest.raises(StoreError, match="outside"):
        ReplayRobot(store, ["pos"], slices={"pos": ["state", 1, 5]})


def test_the_held_out_episodes_are_the_default_only_on_the_store_they_index(store, tmp_path):
    from omegaconf import OmegaConf

    from cadence.config import TaskConfig
    from cadence.robot_schema import RobotConfig
    from cadence.hardware.robot_factory import make_robot

    task = OmegaConf.merge(OmegaConf.structured(TaskConfig), {"dataset": str(store), "obs_keys": ["state"]})
    robot_cfg = OmegaConf.merge(OmegaConf.structured(RobotConfig), {"driver": "replay"})
    assert make_robot(robot_cfg, task, FPS, held_out=[2]).episodes == [2]
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    robot_cfg.dataset = str(other)
    assert make_robot(robot_cfg, task, FPS, held_out=[2]).episodes == [0, 1, 2]
    robot_cfg.episodes = [1]
    assert make_robot(robot_cfg, task, FPS, held_out=[2]).episodes == [1]
