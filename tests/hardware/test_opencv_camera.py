"""OpenCVCamera on real video files written by cv2.VideoWriter (MJPG in .avi), decoded by the
real FFmpeg backend on a real capture thread. Each frame's colour codes its number (red = 5 k),
so the frame read identifies itself. Timing bounds have slack for a loaded 2-core machine."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cadence.hardware.opencv_camera import OpenCVCamera, parse_source
from cadence.hardware.robot import Camera, RobotError

from .waiting import wait_for

FPS = 30.0
HEIGHT, WIDTH = 64, 80
BLUE = 200          # constant blue: shows that frames come out RGB


def write_video(path: Path, frames: int = 45, fps: float = FPS, size: tuple[int, int] = (HEIGHT, WIDTH)) -> Path:
    """An MJPG .avi whose frame ``k`` is one colour: RGB (5 k, 255 - 5 k, BLUE)."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for k in range(frames):
        bgr = np.empty((h, w, 3), np.uint8)
        bgr[...] = (BLUE, 255 - 5 * k, 5 * k)
        writer.write(bgr)
    writer.release()
    return path


def frame_number(frame: np.ndarray) -> int:
    return round(float(frame[..., 0].mean()) / 5)


def camera_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("OpenCVCamera[") and t.is_alive()]


@pytest.fixture
def cameras():
    made: list[OpenCVCamera] = []

    def make(*args, **kwargs) -> OpenCVCamera:
        camera = OpenCVCamera(*args, **kwargs)
        made.append(camera)
        return camera

    yield make
    for camera in made:
        camera.disconnect()


def play(camera: OpenCVCamera, timeout_s: float = 6.0) -> list[tuple[int, float, np.ndarray]]:
    """Every distinct frame seen while polling until the file ends: (number, t_capture, frame)."""
    seen: list[tuple[int, float, np.ndarray]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = camera.finished
        got = camera.read_latest(10.0)
        if got is not None and (not seen or got[1] != seen[-1][1]):
            seen.append((frame_number(got[0]), got[1], got[0]))
        if done:
            return seen
        time.sleep(0.002)
    raise AssertionError("the file did not end in time")


def test_a_file_plays_at_its_own_rate_with_capture_times_on_the_monotonic_clock(tmp_path, cameras):
    camera = cameras(write_video(tmp_path / "clip.avi"), shape=(HEIGHT, WIDTH), name="front")
    assert isinstance(camera, Camera) and camera.shape == (HEIGHT, WIDTH, 3)
    assert camera.read_latest(10.0) is None                      # nothing before connect
    t_connect = time.monotonic()
    camera.connect()
    assert camera.fps == pytest.approx(FPS)
    seen = play(camera)
    numbers = [k for k, _, _ in seen]
    times = [t for _, t, _ in seen]
    assert numbers == sorted(set(numbers)), numbers              # in order, each once
    assert all(b > a for a, b in zip(times, times[1:]))
    assert len(seen) >= 25 and numbers[-1] >= 40, numbers       # most of the 45 frames, to (about) the end
    assert t_connect <= times[0] <= time.monotonic()
    # frame k is captured at about start + k / fps: the offsets agree within a few periods
    offsets = [t - k / FPS for k, t, _ in seen]
    assert max(offsets) - min(offsets) < 0.15, offsets
    span = (numbers[-1] - numbers[0]) / FPS
    assert times[-1] - times[0] == pytest.approx(span, abs=0.15)
    for k, _, frame in seen:
        assert frame.dtype == np.uint8 and frame.shape == (HEIGHT, WIDTH, 3)
        assert np.abs(frame.astype(int) - (5 * k, 255 - 5 * k, BLUE)).max() <= 4   # exact size, RGB order
    assert camera.frames_captured + camera.frames_skipped == 45


def test_after_the_file_ends_the_last_frame_ages_out(tmp_path, cameras):
    camera = cameras(write_video(tmp_path / "short.avi", frames=6), shape=(HEIGHT, WIDTH))
    camera.connect()
    wait_for(lambda: camera.finished)
    frame, t_capture = camera.read_latest(10.0)                  # the last frame stays readable ...
    assert frame_number(frame) >= 3
    wait_for(lambda: camera.read_latest(0.05) is None)           # ... but ages past a small max age
    assert time.monotonic() - t_capture > 0.05
    assert camera.frames_dropped == camera.frames_captured - 1  # read once, at the end
    camera.disconnect()
    camera.disconnect()                                          # idempotent
    assert not camera_threads()
    assert camera.read_latest(0.05) is None


def test_frames_are_resized_to_the_requested_shape(tmp_path, cameras):
    camera = cameras(write_video(tmp_path / "clip.avi", frames=10), shape=(24, 40), name="small")
    assert camera.shape == (24, 40, 3)
    camera.connect()
    frame, _ = camera.read_latest(10.0)
    assert frame.shape == (24, 40, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    k = frame_number(frame)
    assert np.abs(frame.astype(int) - (5 * k, 255 - 5 * k, BLUE)).max() <= 4


def test_a_given_fps_overrides_the_files_rate(tmp_path, cameras):
    camera = cameras(write_video(tmp_path / "clip.avi", frames=30), shape=(HEIGHT, WIDTH), fps=60.0)
    t0 = time.monotonic()
    camera.connect()
    assert camera.fps == 60.0
    seen = play(camera)
    offsets = [t - k / 60.0 for k, t, _ in seen]
    assert max(offsets) - min(offsets) < 0.15, offsets
    assert time.monotonic() - t0 < 30 / FPS + 0.3              # faster than the file's own 30 fps


def test_loop_keeps_producing_frames(tmp_path, cameras):
    camera = cameras(write_video(tmp_path / "loop.avi", frames=8), shape=(HEIGHT, WIDTH), loop=True)
    camera.connect()
    numbers: list[int] = []

    def wrapped_twice() -> bool:
        got = camera.read_latest(1.0)
        if got is not None and (not numbers or frame_number(got[0]) != numbers[-1]):
            numbers.append(frame_number(got[0]))
        return sum(b < a for a, b in zip(numbers, numbers[1:])) >= 2   # went back to the start twice

    wait_for(wrapped_twice, timeout_s=8.0)
    assert not camera.finished and camera.frames_captured > 8
    assert camera.read_latest(0.3) is not None                  # still fresh
    camera.disconnect()
    assert not camera_threads()


@pytest.mark.parametrize("make_source", [
    lambda tmp: tmp / "missing.avi",
    lambda tmp: (tmp / "garbage.avi").write_text("not a video") and tmp / "garbage.avi",
    lambda tmp: "97",                                            # a video device that is not there
])
def test_a_bad_source_is_a_one_line_error_naming_it(tmp_path, cameras, make_source):
    source = make_source(tmp_path)
    camera = cameras(source, shape=(HEIGHT, WIDTH), name="wrist", first_frame_timeout_s=3.0)
    with pytest.raises(RobotError) as info:
        camera.connect()
    message = str(info.value)
    assert "\n" not in message and "wrist" in message and str(source) in message, message
    assert not camera_threads()


def test_sources_and_shapes_are_checked():
    assert parse_source(0) == (0, "device") and parse_source("2") == (2, "device")
    assert parse_source("/dev/video0") == ("/dev/video0", "device")
    assert parse_source("rtsp://cam.local/stream")[1] == "stream"
    assert parse_source("clip.mp4") == ("clip.mp4", "file")
    with pytest.raises(RobotError, match="shape"):
        OpenCVCamera("clip.avi", shape=(0, 96))
    with pytest.raises(RobotError, match="shape"):
        OpenCVCamera("clip.avi", shape=(96,))
    with pytest.raises(RobotError, match="fps"):
        OpenCVCamera("clip.avi", fps=-1.0)
