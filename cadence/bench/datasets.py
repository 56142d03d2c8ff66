"""Datasets written by their formats' own writers for the import benchmark (``cadence bench offline``):
a LeRobot v2.1 dataset (pyarrow parquet, PyAV H.264 mp4) and a robomimic HDF5 (h5py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FPS = 30
CAMERA = "observation.images.cam"


def _frames(episode: int, n: int, size: tuple[int, int]) -> np.ndarray:
    """Textured frames that move (so H.264 has real work): a gradient plus a sliding square."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    base = ((x + y + 17 * episode) % 256).astype(np.uint8)
    frames = np.repeat(np.repeat(base[None, :, :, None], n, 0), 3, 3)
    for t in range(n):
        top, left = (5 * t) % max(1, h - h // 4), (7 * t) % max(1, w - w // 4)
        frames[t, top:top + h // 4, left:left + w // 4] = (255 - 20 * episode % 256, 40, 200)
    return frames


def _write_mp4(path: Path, frames: np.ndarray) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_lerobot_v21(root: Path, episodes: int, frames: int, size: tuple[int, int]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    video_path = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    features = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        CAMERA: {"dtype": "video", "shape": [*size, 3], "names": ["height", "width", "channels"]},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in
           (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
            ("task_index", "int64"))}}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps({
        "codebase_version": "v2.1", "fps": FPS, "total_episodes": episodes, "total_frames": episodes * frames,
        "chunks_size": 1000, "features": features, "data_path": data_path, "video_path": video_path}))
    rng = np.random.default_rng(0)
    for ep in range(episodes):
        state = rng.normal(size=(frames, 2)).astype(np.float32)
        table = pa.table({
            "observation.state": pa.array(list(state), type=pa.list_(pa.float32(), 2)),
            "action": pa.array(list(state * 0.5), type=pa.list_(pa.float32(), 2)),
            "timestamp": pa.array(np.arange(frames, dtype=np.float32) / FPS),
            "frame_index": pa.array(np.arange(frames)), "episode_index": pa.array(np.full(frames, ep)),
            "index": pa.array(ep * frames + np.arange(frames)), "task_index": pa.array(np.zeros(frames, np.int64))})
        path = root / data_path.format(episode_chunk=0, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        _write_mp4(root / video_path.format(episode_chunk=0, video_key=CAMERA, episode_index=ep),
                   _frames(ep, frames, size))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": ep, "tasks": ["push"], "length": frames}) + "\n" for ep in range(episodes)))
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "push"}) + "\n")
    return root


def write_robomimic(path: Path, episodes: int, frames: int, size: tuple[int, int]) -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for ep in range(episodes):
            demo = data.create_group(f"demo_{ep}")
            demo.attrs["num_samples"] = frames
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (frames, 7)))
            demo.create_dataset("obs/robot0_eef_pos", data=rng.normal(size=(frames, 3)))
            demo.create_dataset("obs/agentview_image", data=_frames(ep, frames, size), compression="gzip")
    return path
