"""Rendered rollouts to a GIF and trajectories to a PNG, from a real MuJoCo rollout."""
from __future__ import annotations

from functools import partial

import gymnasium as gym
import imageio.v3 as iio
import matplotlib.colors as mcolors
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import cadence.envs  # noqa: F401
from cadence.policies.action_chunk import ActionChunk
from cadence.envs.bimodal_reach_expert import SERVO_LAG, SIDE_X, TURN_Y
from cadence.envs.rollout import RolloutResult, rollout
from cadence.envs.trajectory_plot import plot_trajectories
from cadence.envs.video import save_video

SIZE = 64
TO, TA, TP = 1, 8, 8


class LaneCarrot:
    """Closed-loop carrot around the obstacle on the goal's side (left when goal x < 0)."""

    def predict_chunk(self, obs):
        state = obs["state"][:, -1].numpy().astype(float)
        out = np.zeros((len(state), TP, 2), np.float32)
        for b, s in enumerate(state):
            pos, goal = s[:2], s[4:6]
            x = -SIDE_X if goal[0] < 0 else SIDE_X
            points = (np.array([pos, (x, pos[1]), (x, TURN_Y), goal]) if pos[1] < TURN_Y
                      else np.array([pos, goal]))
            cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
            for k in range(TP):
                d = min(0.45 * ((k + 1) * 0.1 + SERVO_LAG), cum[-1])
                out[b, k] = [np.interp(d, cum, points[:, 0]), np.interp(d, cum, points[:, 1])]
        return ActionChunk(torch.from_numpy(out), start=TO - 1)


make_env = partial(gym.make, "cadence/BimodalReach-v0", render_mode="rgb_array",
                   render_size=SIZE)


@pytest.fixture(scope="module")
def video_run():
    return rollout(LaneCarrot(), make_env, [0, 3, 4], obs_horizon=TO, exec_horizon=TA,
                   obs_keys=["state"], video_episodes=2, progress=False)


def test_rollout_frames_tile_the_video_episodes(video_run):
    result = video_run
    assert result.success.all()
    assert result.lengths[0] != result.lengths[1]  # the filmed episodes end at different steps
    frames = result.frames
    # the reset frame, then one per step until the longer of the two filmed episodes ended
    assert len(frames) == int(result.lengths[:2].max()) + 1
    for frame in frames:
        assert frame.dtype == np.uint8 and frame.shape == (SIZE, 2 * SIZE, 3)
    # the first tile is episode 0's own scene: its reset render
    env = make_env()
    try:
        env.reset(seed=0)
        np.testing.assert_array_equal(frames[0][:, :SIZE], env.render())
    finally:
        env.close()
    # a finished episode keeps its last (terminal) frame; the other tile goes on moving
    short = int(np.argmin(result.lengths[:2]))
    length = int(result.lengths[short])
    tile = slice(short * SIZE, (short + 1) * SIZE)
    assert length < len(frames) - 1
    for frame in frames[length:]:
        np.testing.assert_array_equal(frame[:, tile], frames[length][:, tile])
    assert not np.array_equal(frames[length][:, tile], frames[length - 1][:, tile])


def test_save_video_gif_round_trip(video_run, tmp_path):
    frames = video_run.frames
    path = save_video(frames, tmp_path / "sub" / "dir" / "rollout.gif", fps=10)
    assert path.exists() and path.stat().st_size > 0
    read = iio.imread(path, index=None)
    # a GIF merges identical consecutive frames; the agents move every step here
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    assert read.shape[0] == len(frames)
    assert read.shape[1:3] == (SIZE, 2 * SIZE)
    # the palette is approximate but the pictures are the same
    assert np.abs(read[..., :3].astype(int) - np.stack(frames).astype(int)).mean() < 8


def test_save_video_rejects_bad_input(tmp_path):
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        save_video([frame], tmp_path / "x.avi", fps=10)
    with pytest.raises(ValueError):
        save_video([], tmp_path / "x.gif", fps=10)
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="imageio-ffmpeg"):
            save_video([frame], tmp_path / "x.mp4", fps=10)
    else:
        assert save_video([frame, frame], tmp_path / "x.mp4", fps=10).stat().st_size > 0


def _count_colour(image: np.ndarray, colour: str, tol: float = 0.04) -> int:
    rgb = np.array(mcolors.to_rgb(colour))
    return int((np.abs(image[..., :3] - rgb).max(axis=-1) < tol).sum())


def test_plot_trajectories(video_run, tmp_path):
    base = video_run
    # add a made-up failure: straight up into the obstacle
    crash = np.zeros((10, 6), np.float32)
    crash[:, 1] = np.linspace(-0.6, -0.3, 10)
    crash[:, 5] = 1.0
    result = RolloutResult(seeds=base.seeds + [99], success=np.append(base.success, False),
                           returns=np.append(base.returns, 0.0),
                           lengths=np.append(base.lengths, 9), modes=base.modes + ["none"],
                           states=base.states + [crash], frames=[])
    modes = set(result.modes[:3])
    path = plot_trajectories(result, tmp_path / "plots" / "traj.png", title="test")
    assert path == tmp_path / "plots" / "traj.png"
    assert path.stat().st_size > 1000
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 200 and image.shape[1] >= 200
    assert image[..., :3].std() > 0.05
    # every category is drawn in its colour: successes per mode, the failure in red
    colours = {"left": "tab:blue", "right": "tab:orange"}
    for mode in modes:
        assert _count_colour(image, colours[mode]) > 20, mode
    for mode in set(colours) - modes:
        assert _count_colour(image, colours[mode]) == 0, mode
    assert _count_colour(image, "tab:red") > 20
