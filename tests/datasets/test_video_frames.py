"""Frames from real video files (H.264, LeRobot's AV1) and images: the frame nearest each timestamp,
in memory for the frames asked for, not for every frame between them; only MP4 opened."""
import subprocess
import sys

import av
import numpy as np
import pytest

from cadence.datasets.episode_budget import EpisodeBudget
from cadence.datasets.episode_store import StoreError
from cadence.datasets.video_frames import read_video_frames

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


def write_small_video(path, frames=10, fps=10):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(frames):
            frame = np.full((48, 64, 3), 20 * k, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_a_playlist_or_another_container_is_not_opened_as_video(tmp_path):
    """FFmpeg guessing the format would follow an HLS playlist to any file or URL it names."""
    outside = tmp_path / "outside.mp4"
    write_small_video(outside)
    playlist = tmp_path / "episode_000000.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n"
                        f"{outside}\n#EXT-X-ENDLIST\n")
    with av.open(str(playlist)) as guessed:                 # what FFmpeg makes of it when it guesses
        assert guessed.format.name == "hls" and guessed.streams.video
    with pytest.raises(StoreError, match="episode_000000.m3u8: not a readable video"):
        read_video_frames(playlist, np.arange(3) / 10, tolerance_s=0.05)
    assert read_video_frames(outside, np.arange(3) / 10, tolerance_s=0.05).shape == (3, 48, 64, 3)


def test_the_frames_are_taken_from_the_episode_budget_before_decoding(tmp_path):
    path = tmp_path / "v.mp4"
    write_small_video(path)
    budget = EpisodeBudget("ep 3", limit=10 * 48 * 64 * 3 - 1)
    with pytest.raises(StoreError, match="ep 3: .*v.mp4.* brings the episode to 92,160 bytes as decoded, more than"):
        read_video_frames(path, np.arange(10) / 10, tolerance_s=0.05, budget=budget)
    budget = EpisodeBudget("ep 3", limit=10 * 48 * 64 * 3)
    frames = read_video_frames(path, np.arange(10) / 10, tolerance_s=0.05, budget=budget)
    assert frames.shape == (10, 48, 64, 3) and budget.used == frames.nbytes
    assert np.abs(frames.reshape(10, -1).mean(axis=1) - 20 * np.arange(10)).max() < 3


@pytest.mark.parametrize("t", [1e20, 1e300, float("inf")])
def test_timestamps_beyond_any_video_are_refused_in_one_line(tmp_path, t):
    path = tmp_path / "v.mp4"
    write_small_video(path)
    with pytest.raises(StoreError, match="v.mp4: timestamps from .* outside a video's 0 .. 10,000,000 s"):
        read_video_frames(path, np.array([0.0, t]), tolerance_s=0.05)
