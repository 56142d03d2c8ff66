"""LeRobot (v2.1 and v3.0) -> episode store, on real datasets written in LeRobot's on-disk layout:
parquet files written with pyarrow, JSON / JSON-lines metadata, mp4 videos encoded with PyAV."""
import json
import logging
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
from cadence.datasets.image_resize import resize_frames
from cadence.datasets.lerobot_import import import_lerobot
from cadence.datasets.video_frames import read_video_frames
from cadence.errors import CadenceError

from .lerobot_datasets import (CAM, FPS, SIDE, SIZE, TASKS, V2_DATA, V2_VIDEO, V3_DATA, V3_VIDEO, WRIST,
                               check_store, colour, edit_info, frames_of, write_mp4, write_v21, write_v30)


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
        """Episode ``ep``'s length in the metadata, ``total_frames`` kept consistent with it."""
        path = root_of[0] / "meta" / "episodes.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for r in records:
            if r["episode_index"] == ep:
                r["length"] = n
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        edit_info(root_of[0], total_frames=sum(r["length"] for r in records))

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


# --- episodes=[...], missing_videos=, image_size=, total_frames ---------------------------------
NUMERIC_KEYS = ["observation.state", "action", "observation.effort", "next.reward", "next.done", "timestamp",
                "frame_index", "task_index"]


def assert_matches_source(store, root, indices, size=None):
    """The store holds exactly the parquet rows of episodes ``indices`` (in that order), value by
    value: every parquet file under ``data/`` read here with pyarrow, independently of the importer."""
    table = pa.concat_tables([pq.read_table(p) for p in sorted((root / "data").rglob("*.parquet"))])
    episode_index = np.asarray(table.column("episode_index").to_pylist())
    assert store.n_episodes == len(indices)
    assert store.source["episodes"] == list(indices)
    for j, ep in enumerate(indices):
        rows = table.take(np.flatnonzero(episode_index == ep))
        got = store.episode(j)
        assert store.episode_lengths()[j] == rows.num_rows > 0
        for key in NUMERIC_KEYS:
            want = np.asarray(rows.column(key).to_pylist())
            assert got[key].shape[0] == len(want), key
            np.testing.assert_array_equal(got[key].reshape(want.shape), want, err_msg=f"episode {ep}, {key}")
        images = np.stack([iio.imread(cell["bytes"]) for cell in rows.column(WRIST).to_pylist()])
        np.testing.assert_array_equal(got[WRIST], images if size is None else resize_frames(images, size))
        assert "episode_index" not in got and "index" not in got


def assert_video_colours(store, indices, lengths, cams=(CAM,), size=(SIZE, SIZE)):
    for j, ep in enumerate(indices):
        got = store.episode(j)
        for cam in cams:
            assert got[cam].shape == (lengths[ep], *size, 3) and got[cam].dtype == np.uint8
            np.testing.assert_allclose(got[cam].reshape(lengths[ep], -1, 3).mean(1),
                                       [colour(ep, t, cam) for t in range(lengths[ep])], atol=6,
                                       err_msg=f"episode {ep}, {cam}")


def test_episodes_subset_v21_is_exactly_those_episodes_rows_and_reads_no_other_file(tmp_path):
    lengths = (5, 7, 4, 3)
    root = write_v21(tmp_path / "v21", lengths=lengths)
    (root / V2_DATA.format(episode_chunk=0, episode_index=1)).unlink()      # not asked for: never opened
    (root / V2_VIDEO.format(episode_chunk=0, video_key=CAM, episode_index=1)).unlink()
    store = import_lerobot(root, tmp_path / "out.zarr", episodes=[3, 0, 2], progress=False)
    assert_matches_source(store, root, [0, 2, 3])
    assert_video_colours(store, [0, 2, 3], lengths)
    assert store.source["episode_tasks"] == [[TASKS[0]], [TASKS[0]], [TASKS[1]]]
    assert store.source["skipped_episodes"] == {} and store.source["image_size"] is None


def test_episodes_subset_v30_takes_its_rows_and_frames_out_of_shared_files(tmp_path):
    lengths = (6, 4, 8)
    root = write_v30(tmp_path / "v30", lengths=lengths)
    store = import_lerobot(root, tmp_path / "out.zarr", episodes=[1], progress=False)
    assert_matches_source(store, root, [1])
    assert_video_colours(store, [1], lengths)       # frames 0.6 s..1.0 s into the shared mp4


@pytest.mark.parametrize("make", [write_v21, write_v30])
def test_an_episode_the_dataset_lacks_is_named_with_the_metadata_file(tmp_path, make):
    root = make(tmp_path / "ds", lengths=(3, 4))
    with pytest.raises(StoreError, match=r"has no episode 7 \(episodes=\[1, 7\] asks for it; the dataset's 2 "
                                         r"episodes have episode_index 0\.\.1\)") as err:
        import_lerobot(root, tmp_path / "out.zarr", episodes=[1, 7], progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(root / "meta" / ("episodes.jsonl" if make is write_v21 else "episodes")))
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("options, message", [
    ({"episodes": []}, "episodes=\\[\\] selects no episode"),
    ({"episodes": [0, 0]}, "episodes lists episode 0 more than once"),
    ({"episodes": ["1"]}, "'episodes\\[0\\]' must be an integer"),
    ({"episodes": 1}, "episodes must be a list"),
    ({"missing_videos": "ignore"}, "missing_videos must be one of \\('error', 'skip'\\), got 'ignore'"),
    ({"image_size": [0, 16]}, "image_size: 'height' is 0"),
    ({"image_size": [16]}, "image_size: must be \\[height, width\\]"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, options, message):
    root = write_v21(tmp_path / "v21", lengths=(2,))
    with pytest.raises(CadenceError, match=message) as err:
        import_lerobot(root, tmp_path / "out.zarr", progress=False, **options)
    assert "\n" not in str(err.value)


def test_a_missing_video_names_file_episode_and_the_two_ways_round_it(tmp_path):
    root = write_v21(tmp_path / "v21", lengths=(3, 4, 2))
    video = root / V2_VIDEO.format(episode_chunk=0, video_key=CAM, episode_index=1)
    video.unlink()
    with pytest.raises(StoreError) as err:
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    message = str(err.value)
    assert message.startswith(f"{video}: missing video file (episode 1, key {CAM})"), message
    assert "missing_videos=skip drops" in message and "videos=false skips the video features" in message
    assert "\n" not in message and not (tmp_path / "out.zarr").exists()
    import_lerobot(root, tmp_path / "out.zarr", episodes=[0, 2], progress=False)    # not asked for: no error


def test_skip_drops_exactly_the_v21_episodes_missing_any_camera(tmp_path, caplog):
    lengths = (3, 4, 2, 5)
    root = write_v21(tmp_path / "v21", lengths=lengths, cams=(CAM, SIDE))
    (root / V2_VIDEO.format(episode_chunk=0, video_key=CAM, episode_index=0)).unlink()
    (root / V2_VIDEO.format(episode_chunk=0, video_key=SIDE, episode_index=2)).unlink()
    with caplog.at_level(logging.WARNING):
        store = import_lerobot(root, tmp_path / "out.zarr", missing_videos="skip", progress=False)
    assert_matches_source(store, root, [1, 3])
    assert_video_colours(store, [1, 3], lengths, cams=(CAM, SIDE))
    skipped = store.source["skipped_episodes"]
    assert sorted(skipped) == ["0", "2"] and store.source["missing_videos"] == "skip"
    assert f"key {CAM}" in skipped["0"] and "episode_000000.mp4" in skipped["0"]
    assert f"key {SIDE}" in skipped["2"] and "episode_000002.mp4" in skipped["2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipping 2 of 4 episodes" in warnings[0] and "[0, 2]" in warnings[0]
    # without the video features nothing is missing: every episode comes in
    store = import_lerobot(root, tmp_path / "all.zarr", videos=False, missing_videos="skip", progress=False)
    assert_matches_source(store, root, [0, 1, 2, 3])
    assert store.source["skipped_episodes"] == {}


def test_skip_drops_every_v30_episode_in_a_missing_video_file(tmp_path):
    lengths = (3, 4, 2, 5)
    root = write_v30(tmp_path / "v30", lengths=lengths, video_files=(0, 1, 0, 1))
    (root / V3_VIDEO.format(video_key=CAM, chunk_index=0, file_index=1)).unlink()
    with pytest.raises(StoreError, match=r"file-001\.mp4: missing video file \(episode 1, key .*; 1 more episode"):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    store = import_lerobot(root, tmp_path / "out.zarr", missing_videos="skip", progress=False)
    assert_matches_source(store, root, [0, 2])
    assert_video_colours(store, [0, 2], lengths)     # episode 2 starts 0.3 s into file-000.mp4
    assert sorted(store.source["skipped_episodes"]) == ["1", "3"]
    assert all("file-001.mp4" in reason for reason in store.source["skipped_episodes"].values())


def test_skip_with_every_video_missing_is_refused(tmp_path):
    root = write_v30(tmp_path / "v30", lengths=(3, 4), video_files=(0, 1))
    for f in (0, 1):
        (root / V3_VIDEO.format(video_key=CAM, chunk_index=0, file_index=f)).unlink()
    with pytest.raises(StoreError, match="nothing left to import") as err:
        import_lerobot(root, tmp_path / "out.zarr", missing_videos="skip", progress=False)
    assert "file-000.mp4: missing video file (episode 0" in str(err.value) and "videos=false" in str(err.value)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("make", [write_v21, write_v30])
def test_image_size_resizes_video_and_image_features(tmp_path, make):
    lengths = (3, 4)
    root = make(tmp_path / "ds", lengths=lengths)
    store = import_lerobot(root, tmp_path / "small.zarr", image_size=[16, 24], progress=False)
    assert store.features[CAM].shape == (16, 24, 3) and store.features[WRIST].shape == (16, 24, 3)
    assert store.source["image_size"] == [16, 24]
    assert_matches_source(store, root, [0, 1], size=(16, 24))      # images: exactly resize_frames of the PNGs
    assert_video_colours(store, [0, 1], lengths, size=(16, 24))
    full = import_lerobot(root, tmp_path / "full.zarr", progress=False)
    for ep in range(len(lengths)):
        want = resize_frames(full.episode(ep)[CAM], (16, 24)).astype(float)
        assert np.abs(store.episode(ep)[CAM] - want).mean() < 2


def textured_mp4(path, height=96, width=128, n=6):
    """Smooth moving patterns in every channel, so resizing and misplacing pixels both show."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = [np.stack([128 + 100 * np.sin(xx / 9 + t), 128 + 100 * np.cos(yy / 7 - t),
                        128 + 80 * np.sin((xx + yy) / 11 + t)], -1).astype(np.uint8) for t in range(n)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", "g": "3"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return np.stack(frames)


@pytest.mark.parametrize("size, close", [((24, 32), 2.5), ((48, 40), 2.5), ((120, 160), 3.0)])
def test_frames_resized_while_decoding_are_close_to_resize_frames_of_full_frames(tmp_path, size, close):
    path = tmp_path / "t.mp4"
    textured_mp4(path)
    times = np.arange(1, 6) / FPS
    full = read_video_frames(path, times, 0.5 / FPS)
    assert full.shape == (5, 96, 128, 3)
    got = read_video_frames(path, times, 0.5 / FPS, size=size)
    want = resize_frames(full, size).astype(float)
    assert got.shape == (5, *size, 3) and got.dtype == np.uint8
    assert np.abs(got - want).mean() < close
    assert np.abs(want[:, :, ::-1] - want).mean() > 10 * close      # the texture tells a mirrored frame apart
    assert np.abs(want[1:] - want[:-1]).mean() > 4 * close           # ... and the next frame
    assert read_video_frames(path, times, 0.5 / FPS, size=(96, 128)).tolist() == full.tolist()


@pytest.mark.parametrize("make, where", [(write_v21, "meta/episodes.jsonl"), (write_v30, "meta/episodes")])
def test_total_frames_must_be_the_sum_of_every_episode_length(tmp_path, make, where):
    root = make(tmp_path / "ds", lengths=(3, 4))
    edit_info(root, total_frames=9)
    for episodes in (None, [0]):          # checked against every episode, before choosing some
        with pytest.raises(StoreError) as err:
            import_lerobot(root, tmp_path / "out.zarr", episodes=episodes, progress=False)
        assert str(err.value) == (f"{root / 'meta' / 'info.json'}: total_frames=9 but the 2 episodes in {where} "
                                  f"hold 7 frames (an incomplete download?)")
    assert not (tmp_path / "out.zarr").exists()
    edit_info(root, total_frames=7)
    assert import_lerobot(root, tmp_path / "out.zarr", progress=False).n_steps == 7


def test_cadence_import_command_passes_episodes_missing_videos_and_image_size(tmp_path):
    root = write_v21(tmp_path / "v21", lengths=(3, 4, 2))
    (root / V2_VIDEO.format(episode_chunk=0, video_key=CAM, episode_index=2)).unlink()
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=lerobot", "source=v21",
                           "out=data/v21.zarr", "episodes=[2,0]", "missing_videos=skip", "image_size=[16,8]"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "imported 1 episodes (3 steps" in proc.stdout
    assert "skipping 1 of 2 episodes whose video file is missing" in proc.stdout + proc.stderr
    store = EpisodeStore.open(tmp_path / "data" / "v21.zarr")
    assert store.source["episodes"] == [0] and sorted(store.source["skipped_episodes"]) == ["2"]
    assert store.features[CAM].shape == (16, 8, 3) and store.source["image_size"] == [16, 8]
