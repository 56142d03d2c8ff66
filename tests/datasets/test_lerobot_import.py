"""LeRobot (v2.1 and v3.0) -> episode store, on real datasets written in LeRobot's on-disk layout:
parquet files written with pyarrow, JSON / JSON-lines metadata, mp4 videos encoded with PyAV."""
import json
import shutil
import subprocess
import sys

import av
import imageio.v3 as iio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.lerobot_import import import_lerobot

FPS = 10
SIZE = 32                    # video frames: SIZE x SIZE
CAM = "observation.images.top"
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


def colour(ep, t):
    """Each episode / frame its own solid colour, far apart from every other within an episode."""
    return np.array([40 + 80 * ep, 20 + 20 * t, 220 - 60 * ep], dtype=np.uint8)


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


def frames_of(ep, n):
    return [np.broadcast_to(colour(ep, t), (SIZE, SIZE, 3)).copy() for t in range(n)]


def write_info(root, version, lengths, data_path, video_path, **extra):
    info = {"codebase_version": version, "robot_type": "so100", "total_episodes": len(lengths),
            "total_frames": sum(lengths), "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS,
            "splits": {"train": f"0:{len(lengths)}"}, "data_path": data_path, "video_path": video_path,
            "features": FEATURES, **extra}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return info


def write_v21(root, lengths=(5, 7, 4)):
    write_info(root, "v2.1", lengths, V2_DATA, V2_VIDEO, total_chunks=1, total_videos=len(lengths))
    first = 0
    for ep, n in enumerate(lengths):
        path = root / V2_DATA.format(episode_chunk=0, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episode_table(ep, n, first), path)
        write_mp4(root / V2_VIDEO.format(episode_chunk=0, video_key=CAM, episode_index=ep), frames_of(ep, n))
        first += n
    episodes = [{"episode_index": ep, "tasks": [TASKS[ep % 2]], "length": n} for ep, n in enumerate(lengths)]
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in reversed(episodes)))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                       for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes_stats.jsonl").write_text("".join(
        json.dumps({"episode_index": ep, "stats": {"action": {"min": [-1, -1], "max": [1, 1]}}}) + "\n"
        for ep in range(len(lengths))))
    return root


def write_v30(root, lengths=(6, 4, 8), shift=0.0):
    """Every episode in one parquet file and one mp4; the episodes' videos start at 0, 0.6 s, 1.0 s."""
    write_info(root, "v3.0", lengths, V3_DATA, V3_VIDEO, data_files_size_in_mb=100, video_files_size_in_mb=500)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    data = root / V3_DATA.format(chunk_index=0, file_index=0)
    data.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables([episode_table(ep, n, starts[ep]) for ep, n in enumerate(lengths)]), data)
    write_mp4(root / V3_VIDEO.format(video_key=CAM, chunk_index=0, file_index=0),
              [f for ep, n in enumerate(lengths) for f in frames_of(ep, n)])
    meta = {"episode_index": list(range(len(lengths))), "tasks": [[TASKS[ep % 2]] for ep in range(len(lengths))],
            "length": list(lengths), "data/chunk_index": [0] * len(lengths), "data/file_index": [0] * len(lengths),
            "dataset_from_index": starts[:-1].tolist(), "dataset_to_index": starts[1:].tolist(),
            f"videos/{CAM}/chunk_index": [0] * len(lengths), f"videos/{CAM}/file_index": [0] * len(lengths),
            f"videos/{CAM}/from_timestamp": (starts[:-1] / FPS + shift).tolist(),
            f"videos/{CAM}/to_timestamp": (starts[1:] / FPS + shift).tolist(),
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


def test_v21_every_episode_and_key_round_trips(tmp_path):
    root = write_v21(tmp_path / "v21")
    store = import_lerobot(root, tmp_path / "v21.zarr", progress=False)
    check_store(store, [5, 7, 4])
    assert store.fps == FPS and store.source["codebase_version"] == "v2.1"


def test_v30_episodes_share_files_and_videos_start_mid_file(tmp_path):
    root = write_v30(tmp_path / "v30")
    store = import_lerobot(root, tmp_path / "v30.zarr", fps=30, progress=False)
    check_store(store, [6, 4, 8])
    assert store.fps == 30 and store.source["codebase_version"] == "v3.0"


def test_videos_false_skips_the_video_keys_and_their_files(tmp_path):
    root = write_v21(tmp_path / "v21")
    shutil.rmtree(root / "videos")
    store = import_lerobot(root, tmp_path / "a.zarr", videos=False, progress=False)
    check_store(store, [5, 7, 4], videos=False)
    assert store.source["videos"] is False


def break_v21(what):
    def cut(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def drop_column(path, column):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([column]), path)

    def set_length(ep, n):
        path = root_of[0] / "meta" / "episodes.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for r in records:
            if r["episode_index"] == ep:
                r["length"] = n
        path.write_text("".join(json.dumps(r) + "\n" for r in records))

    root_of = []

    def apply(root):
        root_of.append(root)
        data = root / V2_DATA.format(episode_chunk=0, episode_index=1)
        video = root / V2_VIDEO.format(episode_chunk=0, video_key=CAM, episode_index=2)
        {"no info": lambda: (root / "meta" / "info.json").unlink(),
         "version": lambda: (root / "meta" / "info.json").write_text(json.dumps(
             {**json.loads((root / "meta" / "info.json").read_text()), "codebase_version": "v1.6"})),
         "no parquet": lambda: data.unlink(),
         "no mp4": lambda: video.unlink(),
         "no column": lambda: drop_column(data, "action"),
         "cut parquet": lambda: cut(data),
         "cut mp4": lambda: cut(video),
         "length": lambda: set_length(1, 6),
         "nan": lambda: pq.write_table(pq.read_table(data).set_column(
             3, "next.reward", pa.array([0.0, np.nan, 0, 0, 0, 0, 0], pa.float32())), data),
         }[what]()
        return root
    return apply


@pytest.mark.parametrize("what, file, message", [
    ("no info", "meta/info.json", "missing"),
    ("version", "meta/info.json", "codebase_version 'v1.6'"),
    ("no parquet", "episode_000001.parquet", "missing parquet file"),
    ("no mp4", "episode_000002.mp4", f"missing video file \\(episode 2, key {CAM}\\)"),
    ("no column", "episode_000001.parquet", "no column 'action'"),
    ("cut parquet", "episode_000001.parquet", "not a readable parquet file"),
    ("cut mp4", "episode_000002.mp4", "not a readable video"),
    ("length", "episode_000001.parquet", "episode 1 has 7 rows but its metadata says length 6"),
    ("nan", "episode_000001.parquet", "episode 1: episode key 'next.reward' holds NaN"),
])
def test_malformed_v21_datasets_name_the_file_and_leave_nothing_behind(tmp_path, what, file, message):
    root = break_v21(what)(write_v21(tmp_path / "v21", lengths=(3, 7, 2)))
    out = tmp_path / "out.zarr"
    with pytest.raises(StoreError, match=message) as err:
        import_lerobot(root, out, progress=False)
    assert file in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_malformed_v30_datasets_name_the_file_and_leave_nothing_behind(tmp_path):
    out = tmp_path / "out.zarr"
    data = V3_DATA.format(chunk_index=0, file_index=0)
    video = V3_VIDEO.format(video_key=CAM, chunk_index=0, file_index=0)

    shifted = write_v30(tmp_path / "shifted", lengths=(3, 4), shift=50.0)
    with pytest.raises(StoreError, match=r"no frames between 49\.9500 s") as err:
        import_lerobot(shifted, out, progress=False)
    assert video in str(err.value) and f"episode 0, key {CAM}" in str(err.value)

    for cut in (data, video):
        root = write_v30(tmp_path / cut.replace("/", "_"), lengths=(3, 4))
        (root / cut).write_bytes((root / cut).read_bytes()[:(root / cut).stat().st_size // 2])
        with pytest.raises(StoreError, match="not a readable") as err:
            import_lerobot(root, out, progress=False)
        assert cut in str(err.value)

    root = write_v30(tmp_path / "meta", lengths=(3, 4))
    episodes = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(episodes)
    pq.write_table(table.set_column(table.schema.get_field_index("length"), "length", pa.array([3, 5])), episodes)
    with pytest.raises(StoreError, match="episode 1 has length 5 but dataset_from_index"):
        import_lerobot(root, out, progress=False)
    pq.write_table(table.drop_columns([f"videos/{CAM}/from_timestamp"]), episodes)
    with pytest.raises(StoreError, match=f"file-000.parquet: no column 'videos/{CAM}/from_timestamp'"):
        import_lerobot(root, out, progress=False)
    import_lerobot(root, out, videos=False, progress=False)      # the video columns are not needed then
    assert EpisodeStore.open(out).n_episodes == 2
    shutil.rmtree(out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_a_video_frame_missing_at_a_timestamp_is_named(tmp_path):
    root = write_v21(tmp_path / "v21", lengths=(3, 4))
    write_mp4(root / V2_VIDEO.format(episode_chunk=0, video_key=CAM, episode_index=1), frames_of(1, 2))
    with pytest.raises(StoreError, match=r"episode_000001\.mp4: no frame within 50\.0 ms of timestamp 0\.2000 s "
                                         rf"\(episode 1, key {CAM}\)"):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_cadence_import_command(tmp_path):
    write_v30(tmp_path / "pusht", lengths=(3, 4))
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=lerobot", "source=pusht",
                           "out=data/pusht.zarr", "videos=false"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "imported 2 episodes (7 steps" in proc.stdout
    store = EpisodeStore.open(tmp_path / "data" / "pusht.zarr")
    assert store.n_episodes == 2 and CAM not in store.keys and store.fps == FPS
    again = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=lerobot", "source=nowhere",
                            "out=data/other.zarr"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 1 and "nowhere: no such directory" in again.stderr
