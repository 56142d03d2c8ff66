"""LeRobot datasets (v2.1 and v3.0) written in LeRobot's on-disk layout for the tests: parquet files
written with pyarrow, JSON / JSON-lines metadata, mp4 videos encoded with PyAV; and the check that a
store imported from one holds exactly what was written."""
import json

import av
import imageio.v3 as iio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
SIZE = 32                    # video frames: SIZE x SIZE
CAM = "observation.images.top"
SIDE = "observation.images.side"     # a second camera, only where a test asks for it (cams=...)
WRIST = "observation.images.wrist"
TASKS = ["pick up the cube", "push the T into place"]
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["vx", "vy"]},
    "observation.effort": {"dtype": "float64", "shape": [2, 2], "names": None},
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
    "observation.note": {"dtype": "string", "shape": [1], "names": None},
    WRIST: {"dtype": "image", "shape": [8, 8, 3], "names": ["height", "width", "channel"]},
    CAM: {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"],
          "info": {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "yuv420p"}},
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
SCHEMA = pa.schema([
    ("observation.state", pa.list_(pa.float32(), 3)),            # fixed-size list (datasets.Sequence)
    ("action", pa.list_(pa.float32())),                          # variable-size list
    ("observation.effort", pa.list_(pa.list_(pa.float64(), 2), 2)),   # Array2D's nested lists
    ("next.reward", pa.float32()), ("next.done", pa.bool_()), ("observation.note", pa.string()),
    (WRIST, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),   # datasets.Image
    ("timestamp", pa.float32()), ("frame_index", pa.int64()), ("episode_index", pa.int64()),
    ("index", pa.int64()), ("task_index", pa.int64()),
])


def colour(ep, t, cam=CAM):
    """Each episode / frame its own solid colour, far apart from every other within an episode
    (the side camera's the top camera's channels reversed)."""
    rgb = np.array([(40 + 80 * ep) % 256, 20 + 20 * t, (220 - 60 * ep) % 256], dtype=np.uint8)
    return rgb if cam == CAM else rgb[::-1].copy()


def episode_values(ep, n):
    rng = np.random.default_rng(ep)
    return {"observation.state": rng.normal(size=(n, 3)).astype(np.float32),
            "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
            "observation.effort": rng.normal(size=(n, 2, 2)),
            "next.reward": (np.arange(n) == n - 1).astype(np.float32)[:, None],
            "next.done": (np.arange(n) == n - 1)[:, None],
            WRIST: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "timestamp": (np.arange(n, dtype=np.float32) / FPS)[:, None],
            "frame_index": np.arange(n)[:, None], "task_index": np.full((n, 1), ep % 2)}


def episode_table(ep, n, first_index):
    v = episode_values(ep, n)
    columns = {
        "observation.state": list(v["observation.state"]), "action": list(v["action"]),
        "observation.effort": [row.tolist() for row in v["observation.effort"]],
        "next.reward": v["next.reward"][:, 0], "next.done": v["next.done"][:, 0],
        "observation.note": [f"step {t}" for t in range(n)],
        WRIST: [{"bytes": iio.imwrite("<bytes>", img, extension=".png"), "path": f"frame_{t:06d}.png"}
                for t, img in enumerate(v[WRIST])],
        "timestamp": v["timestamp"][:, 0], "frame_index": np.arange(n), "episode_index": np.full(n, ep),
        "index": first_index + np.arange(n), "task_index": v["task_index"][:, 0]}
    return pa.table({k: pa.array(columns[k], type=SCHEMA.field(k).type) for k in SCHEMA.names}, schema=SCHEMA)


def write_mp4(path, frames):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "g": "3"}      # keyframes every 3 frames: seeks land mid-file
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def frames_of(ep, n, cam=CAM):
    return [np.broadcast_to(colour(ep, t, cam), (SIZE, SIZE, 3)).copy() for t in range(n)]


def features_with(cams):
    """FEATURES with a video feature for each of ``cams`` (CAM is always one)."""
    return {**FEATURES, **{cam: FEATURES[CAM] for cam in cams}}


def write_info(root, version, lengths, data_path, video_path, cams=(CAM,), **extra):
    info = {"codebase_version": version, "robot_type": "so100", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS,
            "splits": {"train": f"0:{len(lengths)}"}, "data_path": data_path, "video_path": video_path,
            "features": features_with(cams), **extra}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return info


def edit_info(root, **changes):
    path = root / "meta" / "info.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=4))


def write_v21(root, lengths=(5, 7, 4), cams=(CAM,)):
    write_info(root, "v2.1", lengths, V2_DATA, V2_VIDEO, cams=cams, total_chunks=1,
               total_videos=len(lengths) * len(cams))
    first = 0
    for ep, n in enumerate(lengths):
        path = root / V2_DATA.format(episode_chunk=0, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episode_table(ep, n, first), path)
        for cam in cams:
            write_mp4(root / V2_VIDEO.format(episode_chunk=0, video_key=cam, episode_index=ep), frames_of(ep, n, cam))
        first += n
    episodes = [{"episode_index": ep, "tasks": [TASKS[ep % 2]], "length": n} for ep, n in enumerate(lengths)]
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in reversed(episodes)))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes_stats.jsonl").write_text("".join(
        json.dumps({"episode_index": ep, "stats": {"action": {"min": [-1, -1], "max": [1, 1]}}}) + "\n"
        for ep in range(len(lengths))))
    return root


def write_v30(root, lengths=(6, 4, 8), shift=0.0, video_files=None):
    """Every episode in one parquet file; by default in one mp4 too (the episodes' videos start at
    0, 0.6 s, 1.0 s). ``video_files[ep]`` puts episode ``ep`` in mp4 ``file-<that>.mp4`` instead,
    after the file's earlier episodes."""
    write_info(root, "v3.0", lengths, V3_DATA, V3_VIDEO, data_files_size_in_mb=100, video_files_size_in_mb=500)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    data = root / V3_DATA.format(chunk_index=0, file_index=0)
    data.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([episode_table(ep, n, starts[ep]) for ep, n in enumerate(lengths)]), data)
    files = list(video_files or [0] * len(lengths))
    video_from = []                       # each episode's first frame within its mp4
    for f in sorted(set(files)):
        mine = [ep for ep in range(len(lengths)) if files[ep] == f]
        write_mp4(root / V3_VIDEO.format(video_key=CAM, chunk_index=0, file_index=f),
                  [frame for ep in mine for frame in frames_of(ep, lengths[ep])])
    for ep in range(len(lengths)):
        video_from.append(sum(lengths[e] for e in range(ep) if files[e] == files[ep]))
    video_from = np.array(video_from)
    meta = {"episode_index": list(range(len(lengths))), "tasks": [[TASKS[ep % 2]] for ep in range(len(lengths))],
            "length": list(lengths), "data/chunk_index": [0] * len(lengths), "data/file_index": [0] * len(lengths),
            "dataset_from_index": starts[:-1].tolist(), "dataset_to_index": starts[1:].tolist(),
            f"videos/{CAM}/chunk_index": [0] * len(lengths), f"videos/{CAM}/file_index": files,
            f"videos/{CAM}/from_timestamp": (video_from / FPS + shift).tolist(),
            f"videos/{CAM}/to_timestamp": ((video_from + np.array(lengths)) / FPS + shift).tolist(),
            "stats/action/min": [[-1.0, -1.0]] * len(lengths),
            "meta/episodes/chunk_index": [0] * len(lengths), "meta/episodes/file_index": [0] * len(lengths)}
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(meta), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": list(range(len(TASKS))), "task": TASKS}), root / "meta" / "tasks.parquet")
    return root


def check_store(store, lengths, videos=True):
    assert store.n_episodes == len(lengths) and list(store.episode_lengths()) == list(lengths)
    keys = {"observation.state", "action", "observation.effort", "next.reward", "next.done", WRIST,
            "timestamp", "frame_index", "task_index"} | ({CAM} if videos else set())
    assert store.keys == sorted(keys)
    for ep, n in enumerate(lengths):
        got, ref = store.episode(ep), episode_values(ep, n)
        for key, values in ref.items():
            np.testing.assert_array_equal(got[key], values, err_msg=key)
            assert got[key].dtype == values.dtype, key
        if videos:
            assert got[CAM].shape == (n, SIZE, SIZE, 3) and got[CAM].dtype == np.uint8
            means = got[CAM].reshape(n, -1, 3).mean(1)
            np.testing.assert_allclose(means, [colour(ep, t) for t in range(n)], atol=6)
    assert store.features["observation.state"].shape == (3,) and store.features["next.reward"].shape == (1,)
    source = store.source
    assert source["format"] == "lerobot" and source["info"]["fps"] == FPS
    assert source["tasks"] == {"0": TASKS[0], "1": TASKS[1]}
    assert source["episodes"] == list(range(len(lengths)))
    assert source["episode_tasks"] == [[TASKS[ep % 2]] for ep in range(len(lengths))]
    assert source["skipped"] == {"observation.note": "string"}
