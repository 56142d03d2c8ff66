"""LeRobot datasets from elsewhere, tampered the ways a review found: each is refused in one line
naming the file, before it reads anything outside the dataset or allocates without bound."""
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cadence.datasets.episode_store import StoreError
from cadence.datasets.lerobot_import import import_lerobot
from cadence.untrusted import LIMITS

from .lerobot_datasets import V2_DATA, WRIST, edit_info, write_v21, write_v30


def data_file(root, ep=0):
    return root / V2_DATA.format(episode_chunk=0, episode_index=ep)


def refused(root, tmp_path, match, **options):
    out = tmp_path / "out.zarr"
    with pytest.raises(StoreError, match=match):
        import_lerobot(root, out, progress=False, **options)
    assert not out.exists()


def test_image_bytes_given_as_text_are_refused_never_read_as_a_path(tmp_path):
    """A string in the image column would be a path or URL to an image reader."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(secret)
    root = write_v21(tmp_path / "ds", lengths=(2,))
    table = pq.read_table(data_file(root))
    text = pa.array([{"bytes": str(secret), "path": "x.png"}] * 2,
                    pa.struct([("bytes", pa.string()), ("path", pa.string())]))
    pq.write_table(table.set_column(table.schema.get_field_index(WRIST), WRIST, text), data_file(root))
    refused(root, tmp_path, f"episode_000000.parquet: key '{WRIST}' of episode 0: expected image bytes "
                            r"\(struct<bytes: binary, path>\)", videos=False)


def test_a_video_path_that_is_not_mp4_is_refused(tmp_path):
    root = write_v21(tmp_path / "ds", lengths=(2,))
    edit_info(root, video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.m3u8")
    refused(root, tmp_path, r"info.json: 'video_path' .* must name \.mp4 files")


@pytest.mark.parametrize("template, message", [
    ("data/\0/episode_{episode_index:06d}.parquet", "gives an unusable path"),
    ("data/" + "x" * 300 + "/episode_{episode_index:06d}.parquet", "gives an unusable path"),
    ("data/loop/episode_{episode_index:06d}.parquet", "gives an unusable path"),
])
def test_data_path_templates_that_make_unusable_paths_are_one_line(tmp_path, template, message):
    root = write_v21(tmp_path / "ds", lengths=(2,))
    os.symlink("loop", root / "data" / "loop")              # a link to itself
    edit_info(root, data_path=template)
    refused(root, tmp_path, f"info.json: 'data_path' .*{message}")


def test_a_timestamp_of_many_values_per_frame_is_refused(tmp_path):
    """[K] timestamps per frame would decode K frames per step."""
    root = write_v21(tmp_path / "ds", lengths=(2,))
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["timestamp"]["shape"] = [200_000]
    edit_info(root, features=info["features"])
    refused(root, tmp_path, r"info.json: 'features.timestamp.shape' must be \[1\]")


def test_more_episode_records_than_info_declares_are_refused_before_parsing(tmp_path):
    root = write_v21(tmp_path / "ds", lengths=(2, 3))
    path = root / "meta" / "episodes.jsonl"
    path.write_text(path.read_text() + "not json\n" * 10)
    refused(root, tmp_path, r"episodes.jsonl: holds 12 lines, more than the 2 episodes meta/info.json declares")


def test_metadata_linked_from_outside_the_dataset_is_refused(tmp_path):
    root = write_v21(tmp_path / "ds", lengths=(2,))
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(json.dumps({"task_index": 0, "task": "someone else's"}) + "\n")
    (root / "meta" / "tasks.jsonl").unlink()
    os.symlink(outside, root / "meta" / "tasks.jsonl")
    refused(root, tmp_path, r"tasks.jsonl: the file leads out of")


def test_lists_nested_deeper_than_an_observation_may_be_are_refused(tmp_path):
    root = write_v21(tmp_path / "ds", lengths=(2,))
    table = pq.read_table(data_file(root))
    nested = pa.array([0.0, 1.0])
    for _ in range(LIMITS["dims"] + 1):
        nested = pa.ListArray.from_arrays(pa.array(np.arange(len(nested) + 1, dtype=np.int32)), nested)
    i = table.schema.get_field_index("action")
    pq.write_table(table.set_column(i, "action", nested), data_file(root))
    refused(root, tmp_path, "key 'action' of episode 0: lists nested more than 8 deep")


def test_an_episode_of_images_decoding_past_the_budget_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """Identical PNGs compress to nothing: the episode's decoded size is what is bounded."""
    root = write_v21(tmp_path / "ds", lengths=(3,))
    table = pq.read_table(data_file(root))
    buf = io.BytesIO()
    Image.new("RGB", (512, 512)).save(buf, format="PNG")
    cells = pa.array([{"bytes": buf.getvalue(), "path": "x.png"}] * 3,
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(table.set_column(table.schema.get_field_index(WRIST), WRIST, cells), data_file(root))
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][WRIST]["shape"] = [512, 512, 3]
    edit_info(root, features=info["features"])
    monkeypatch.setitem(LIMITS, "episode_bytes", 3 * 512 * 512 * 3)     # the images alone, not the actions too
    refused(root, tmp_path, f"episode 0: key '{WRIST}' brings the episode to [0-9,]+ bytes as decoded, more "
                            "than the 2,359,296", videos=False)
    monkeypatch.setitem(LIMITS, "episode_bytes", 2 ** 32)
    store = import_lerobot(root, tmp_path / "ok.zarr", videos=False, progress=False)
    assert store.episode(0)[WRIST].shape == (3, 512, 512, 3)


def test_a_task_index_listed_twice_is_refused_not_overwritten(tmp_path):
    root = write_v21(tmp_path / "ds", lengths=(2,))
    path = root / "meta" / "tasks.jsonl"
    path.write_text(path.read_text() + json.dumps({"task_index": 0, "task": "another"}) + "\n")
    refused(root, tmp_path, r"tasks.jsonl: line 3: task_index 0 is listed more than once")
    root = write_v30(tmp_path / "v30", lengths=(2, 3))
    pq.write_table(pa.table({"task_index": [0, 1, 1], "task": ["a", "b", "c"]}), root / "meta" / "tasks.parquet")
    refused(root, tmp_path, r"tasks.parquet: task_index 1 is listed more than once")
