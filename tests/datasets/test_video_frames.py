"""Frames from real video files (H.264, LeRobot's AV1) and images: the frame nearest each timestamp,
in memory for the frames asked for, not for every frame between them; images bounded by their header."""
import io
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from cadence.datasets.episode_store import StoreError
from cadence.datasets.video_frames import decode_image, read_video_frames

RATE, SIZE, SECONDS = 300, 256, 2


def write_fast_camera(path):
    """A camera at 300 fps whose frame k is grey level k % 250 (H.264, near lossless)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0", "g": "30"}
        for k in range(RATE * SECONDS):
            frame = np.full((SIZE, SIZE, 3), k % 250, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


PEAK = """
import sys
import numpy as np
from cadence.datasets.video_frames import read_video_frames
timestamps = np.array([float(t) for t in sys.argv[2].split(",")])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                     # peak RSS from here on: the read alone, not the imports
frames = read_video_frames(sys.argv[1], timestamps, tolerance_s=0.5 / {rate})
status = open("/proc/self/status").read()
np.save(sys.argv[3], frames)
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
"""


def _peak_kib(path, timestamps, out) -> int:
    """Peak RSS of a fresh process while it reads these frames (KiB, Linux); the frames go to ``out``."""
    done = subprocess.run([sys.executable, "-c", PEAK.format(rate=RATE), str(path), ",".join(map(str, timestamps)),
                           str(out)], capture_output=True, text=True, check=True, timeout=120)
    return int(done.stdout.split()[-1])


def test_few_timestamps_from_a_fast_camera_keep_only_their_frames(tmp_path):
    path = tmp_path / "fast.mp4"
    write_fast_camera(path)
    timestamps = np.arange(10) * 0.2 + 0.05          # 10 Hz over the 2 s: frames 15, 75, 135, ...
    spread = _peak_kib(path, timestamps, tmp_path / "spread.npy")
    one = _peak_kib(path, timestamps[:1], tmp_path / "one.npy")
    frames = np.load(tmp_path / "spread.npy")
    expected = np.round(timestamps * RATE).astype(int) % 250
    assert frames.shape == (10, SIZE, SIZE, 3)
    assert np.abs(frames.reshape(10, -1).mean(axis=1) - expected).max() < 2
    window = 540 * SIZE * SIZE * 3 // 1024           # the 1.8 s between them: 540 frames, 106 MB
    assert spread - one < window / 4, (spread, one)   # the 10 frames asked for (2 MB) and the decoder's own


def test_av1_as_lerobot_encodes_its_videos_reads_the_nearest_frames(tmp_path):
    """LeRobot's own encoder settings (libsvtav1, a keyframe every 2 frames, crf 30): what its datasets hold."""
    path, fps = tmp_path / "av1.mp4", 30
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libsvtav1", rate=fps)
        stream.width = stream.height = 96
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "2", "crf": "30"}
        for k in range(90):
            frame = np.full((96, 96, 3), 2 * k, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    timestamps = np.arange(30, 60) / fps                # mid-file: a seek first
    frames = read_video_frames(path, timestamps, tolerance_s=0.5 / fps)
    assert frames.shape == (30, 96, 96, 3)
    assert np.abs(frames.reshape(30, -1).mean(axis=1) - 2 * np.arange(30, 60)).max() < 3


def test_an_image_too_large_is_refused_from_its_header_before_decoding():
    small, huge = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(small, format="PNG")
    Image.new("L", (4096, 4096)).save(huge, format="PNG")          # 16.8M pixels in a few kB
    assert len(huge.getvalue()) < 100_000
    assert decode_image(small.getvalue(), "small").shape == (48, 64, 3)
    with pytest.raises(StoreError, match="big: an image of 4096x4096 pixels, more than 16,777,216 values"):
        decode_image(huge.getvalue(), "big")
