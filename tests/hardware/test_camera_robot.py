"""WithCameras around the real SimRobot with real OpenCV cameras playing real video files
(cv2.VideoWriter, MJPG in .avi), and cameras_from_config's one-line errors. Timing bounds have
slack for a loaded 2-core machine."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from cadence.config import TaskConfig
from cadence.robot_schema import RobotConfig
from cadence.envs import DEFAULT_TASK_ID
from cadence.hardware.camera_robot import WithCameras, cameras_from_config
from cadence.hardware.opencv_camera import OpenCVCamera
from cadence.hardware.robot import Feature, Robot, RobotError
from cadence.hardware.robot_factory import make_robot
from cadence.hardware.sim_robot import SimRobot

from .waiting import wait_for

RATE = 50.0
FPS = 30.0
KEY = "observation.images.front"


def write_video(path: Path, frames: int, fps: float = FPS, size: tuple[int, int] = (48, 64)) -> str:
    """An MJPG .avi whose frame ``k`` is one colour: red 5 k (the frame tells its number)."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for k in range(frames):
        writer.write(np.full((h, w, 3), (100, 100, 5 * k), np.uint8))
    writer.release()
    return str(path)


def camera_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("OpenCVCamera[") and t.is_alive()]


@pytest.fixture
def wrap():
    made: list[WithCameras] = []

    def make(cameras, max_ages_s=None, **kwargs) -> WithCameras:
        robot = WithCameras(SimRobot(DEFAULT_TASK_ID, rate_hz=RATE), cameras, max_ages_s, **kwargs)
        made.append(robot)
        return robot

    yield make
    for robot in made:
        robot.disconnect()


def test_observations_carry_each_cameras_newest_frame_and_capture_time(tmp_path, wrap):
    front = OpenCVCamera(write_video(tmp_path / "front.avi", 20), shape=(24, 32), name="front", loop=True)
    wrist = OpenCVCamera(write_video(tmp_path / "wrist.avi", 20), shape=(48, 64), name="wrist", loop=True,
                         key="wrist_rgb")
    robot = wrap([front, wrist])
    assert isinstance(robot, Robot)
    spec = robot.spec
    assert spec.observation[KEY] == Feature((24, 32, 3), "uint8")
    assert spec.observation["wrist_rgb"] == Feature((48, 64, 3), "uint8")
    assert spec.observation["state"] == robot.robot.spec.observation["state"]
    assert spec.action == robot.robot.spec.action and spec.rate_hz == RATE

    robot.connect()
    t_before = time.monotonic()
    first = robot.reset(seed=0)
    assert set(first.values) == {"state", KEY, "wrist_rgb"}
    assert first.values[KEY].shape == (24, 32, 3) and first.values["wrist_rgb"].shape == (48, 64, 3)
    assert first.seq == 0 and set(first.info["t_capture"]) == {"front", "wrist"}
    assert all(t >= t_before for t in first.info["t_capture"].values())   # captured after the reset

    later = wait_for(lambda: next((o for o in [robot.latest_observation()]
                                   if o is not None and o.seq >= 10), None))
    assert "is_success" in later.info and "done" in later.info          # the robot's info is kept
    for name, key in (("front", KEY), ("wrist", "wrist_rgb")):
        t_frame = later.info["t_capture"][name]
        assert t_frame > first.info["t_capture"][name]                   # a newer frame
        assert time.monotonic() - t_frame <= robot.max_age_s(name)
        assert later.values[key].dtype == np.uint8
    assert robot.max_age_s("front") == pytest.approx(3 / FPS)           # default: three periods
    assert robot.steps >= 10 and getattr(robot, "estop", None) is None   # the robot's own attributes
    applied = robot.send_action(np.full(2, 9.0, np.float32))
    assert np.all(applied == np.float32(1.5))                           # the robot's clipping
    robot.hold()

    robot.disconnect()
    robot.disconnect()                                                   # idempotent
    assert not camera_threads()


def test_a_stale_camera_withholds_the_observation(tmp_path, wrap):
    camera = OpenCVCamera(write_video(tmp_path / "short.avi", 6), shape=(48, 64), name="front")
    robot = wrap([camera], {"front": 0.1})
    robot.connect()
    obs = robot.reset(seed=1)
    assert obs.values[KEY].shape == (48, 64, 3)
    wait_for(lambda: camera.finished)
    wait_for(lambda: robot.latest_observation() is None)      # the last frame is older than 0.1 s
    assert robot.stale_frames >= 1 and robot.stale_by_camera == {"front": robot.stale_frames}
    assert robot.robot.latest_observation() is not None      # the robot itself still observes
    with pytest.raises(RobotError, match=r"cameras \['front'\]: no frame"):
        robot.reset(seed=2)                                   # no frame after the reset: refused


def test_a_camera_key_may_not_shadow_the_robots(tmp_path, wrap):
    camera = OpenCVCamera(write_video(tmp_path / "clip.avi", 4), name="front", key="state")
    with pytest.raises(RobotError, match="'state' is already the robot's"):
        wrap([camera]).spec  # noqa: B018
    with pytest.raises(RobotError, match="unknown cameras"):
        wrap([], {"front": 0.1})
    with pytest.raises(RobotError, match="unique"):
        wrap([OpenCVCamera("a.avi", name="x"), OpenCVCamera("b.avi", name="x")])


def test_a_camera_that_cannot_open_fails_connect_and_leaves_nothing_running(tmp_path, wrap):
    robot = wrap([OpenCVCamera(str(tmp_path / "missing.avi"), name="front")])
    with pytest.raises(RobotError, match="missing.avi"):
        robot.connect()
    assert not camera_threads()
    assert not [t for t in threading.enumerate() if t.name.startswith("SimRobot[") and t.is_alive()]


def test_cameras_from_config(tmp_path):
    clip = write_video(tmp_path / "clip.avi", 4)
    cfg = OmegaConf.create({
        "front": {"source": clip, "shape": [24, 32], "fps": 20},
        "wrist": {"source": 0, "shape": [96, 96]},
        "side": {"source": "/dev/video2", "shape": [64, 48], "max_age_ms": 250, "key": "image", "loop": True},
    })
    cameras, max_ages = cameras_from_config(cfg)
    assert [c.name for c in cameras] == ["front", "wrist", "side"]
    assert [c.shape for c in cameras] == [(24, 32, 3), (96, 96, 3), (64, 48, 3)]
    assert max_ages == pytest.approx({"front": 3 / 20, "wrist": 0.15, "side": 0.25})
    assert cameras[2].key == "image" and cameras[2].loop and cameras[0].key is None
    assert cameras_from_config({}) == ([], {})


@pytest.mark.parametrize("entry, where", [
    ({"source": 0, "shape": [96, 96], "fsp": 30}, "robot.cameras.cam.fsp"),
    ({"shape": [96, 96]}, "robot.cameras.cam.source"),
    ({"source": 0}, "robot.cameras.cam.shape"),
    ({"source": 0, "shape": [96]}, "robot.cameras.cam.shape"),
    ({"source": 0, "shape": [0, 96]}, "robot.cameras.cam.shape"),
    ({"source": 0, "shape": "96x96"}, "robot.cameras.cam.shape"),
    ({"source": 0, "shape": [96, 96], "fps": -5}, "robot.cameras.cam.fps"),
    ({"source": 0, "shape": [96, 96], "max_age_ms": 0}, "robot.cameras.cam.max_age_ms"),
    ({"source": 0, "shape": [96, 96], "loop": "yes"}, "robot.cameras.cam.loop"),
    ({"source": 0, "shape": [96, 96], "key": ""}, "robot.cameras.cam.key"),
    ("/dev/video0", "robot.cameras.cam"),
])
def test_a_bad_camera_config_is_one_line_naming_the_field(entry, where):
    for cfg in ({"cam": entry}, OmegaConf.create({"cam": entry})):
        with pytest.raises(RobotError) as info:
            cameras_from_config(cfg)
        message = str(info.value)
        assert message.startswith(where + ":") and "\n" not in message, message


def test_the_factory_attaches_configured_cameras(tmp_path):
    clip = write_video(tmp_path / "clip.avi", 10)
    cfg = OmegaConf.merge(OmegaConf.structured(RobotConfig),
                          {"driver": "sim", "cameras": {"top": {"source": clip, "shape": [24, 24], "loop": True}}})
    robot = make_robot(cfg, OmegaConf.structured(TaskConfig), 10.0)
    try:
        assert isinstance(robot, WithCameras) and isinstance(robot.robot, SimRobot)
        assert robot.spec.observation["observation.images.top"] == Feature((24, 24, 3), "uint8")
        robot.connect()
        assert robot.reset(seed=0).values["observation.images.top"].shape == (24, 24, 3)
    finally:
        robot.disconnect()
