"""Datasets from elsewhere that are corrupt, malformed or out of bounds: real zarr stores written
by cadence and then damaged, real HDF5 files written with h5py, real LeRobot-layout folders.
Each must end in a CadenceError whose message names the file and the key, never a traceback;
and through the real ``cadence`` command, in one line on stderr with exit code 1."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from cadence.datasets.episode_store import EpisodeStore
from cadence.datasets.lerobot_import import import_lerobot
from cadence.datasets.robomimic_import import import_robomimic
from cadence.errors import CadenceError
from tests.datasets.lerobot_datasets import V2_DATA, write_v21, write_v30
from tests.datasets.test_robomimic_import import write_robomimic
from tests.datasets.test_store_fuzz import build_store, read_like_training

CADENCE = Path(sys.executable).with_name("cadence")


# --- zarr stores -----------------------------------------------------------------------------
def edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def flip_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(16, len(raw), 7):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def set_ends(store: Path, ends) -> None:
    zarr.open_group(str(store), mode="r+")["meta/episode_ends"][:] = ends


def huge_claim_without_chunks(store: Path) -> None:
    """A data array and episode_ends that claim 10^9 steps, which no chunk on disk backs."""
    edit_json(store / "data/action/.zarray", shape=[10 ** 9, 2])
    for key in ("state", "image"):
        meta = json.loads((store / f"data/{key}/.zarray").read_text())
        edit_json(store / f"data/{key}/.zarray", shape=[10 ** 9, *meta["shape"][1:]])
    set_ends(store, [5, 14, 10 ** 9])


def blosc_claims_2gib(store: Path) -> None:
    chunk = store / "data/state/0.0"
    raw = bytearray(chunk.read_bytes())
    raw[4:8] = struct.pack("<I", 2 ** 31 - 1)
    chunk.write_bytes(bytes(raw))


def chunk_is_dev_zero(store: Path) -> None:
    (store / "data/state/0.0").unlink()
    (store / "data/state/0.0").symlink_to("/dev/zero")


def link_a_chunk(store: Path) -> None:
    chunk = store / "data/action/0.0"
    outside = store.parent / "elsewhere"
    outside.write_bytes(chunk.read_bytes())
    chunk.unlink()
    chunk.symlink_to(outside)


ZARR_CASES = {
    "corrupt chunk": (lambda s: flip_bytes(s / "data/action/0.0"), "data/action", "cannot read"),
    "chunk claims 2 GiB": (blosc_claims_2gib, "data/state", "destination buffer too small"),
    "chunk is /dev/zero": (chunk_is_dev_zero, "data/state/0.0", "not a chunk file"),
    "malformed .zarray": (lambda s: (s / "data/state/.zarray").write_text('{"shape": [18, '),
                          "data/state/.zarray", "not valid JSON"),
    "absurd shape": (lambda s: edit_json(s / "data/action/.zarray", shape=[10 ** 12, 2]),
                     "data/action/.zarray", "'shape[0]' is 1000000000000"),
    "absurd chunks": (lambda s: edit_json(s / "data/image/.zarray", chunks=[10 ** 7, 4, 4, 3]),
                      "data/image/.zarray", "'chunks' make chunks of 480,000,000 bytes"),
    "a chunk dimension": (lambda s: edit_json(s / "data/image/.zarray", chunks=[1, 10 ** 9, 4, 3]),
                          "data/image/.zarray", "'chunks[1]' is 1000000000"),
    "pickled objects": (lambda s: edit_json(s / "data/action/.zarray", dtype="|O", filters=[{"id": "pickle"}]),
                        "data/action/.zarray", "'dtype'"),
    "unknown codec": (lambda s: edit_json(s / "data/action/.zarray", compressor={"id": "pickle"}),
                      "data/action/.zarray", "'compressor'"),
    "claims without chunks": (huge_claim_without_chunks, "data/action", "chunks holding its first 1000000000 rows"),
    "ends decrease": (lambda s: set_ends(s, [5, 3, 18]), "episode_ends", "strictly increasing"),
    "ends negative": (lambda s: set_ends(s, [-5, 14, 18]), "episode_ends", "episode 0 ends at -5"),
    "ends past data": (lambda s: set_ends(s, [5, 14, 40]), "data/", "episodes end at step 40"),
    "ends beyond limit": (lambda s: set_ends(s, [5, 14, 2 ** 62]), "meta/episode_ends", "more than"),
    "ends are floats": (lambda s: edit_json(s / "meta/episode_ends/.zarray", dtype="<f8"),
                        "meta/episode_ends", "1-D integer array"),
    "corrupt ends chunk": (lambda s: flip_bytes(s / "meta/episode_ends/0"), "meta/episode_ends", "cannot read"),
    "fps a string": (lambda s: edit_json(s / ".zattrs", fps="ten"), ".zattrs", "'fps' must be a finite number"),
    "features a list": (lambda s: edit_json(s / ".zattrs", features=[1, 2]), ".zattrs", "'features' must be an object"),
    "NaN in .zattrs": (lambda s: (s / ".zattrs").write_text('{"fps": NaN}'), ".zattrs", "NaN"),
    "group format": (lambda s: edit_json(s / "data/.zgroup", zarr_format=3), "data/.zgroup", "'zarr_format'"),
    "NaN in data": (lambda s: zarr.open_group(str(s), mode="r+")["data/action"].__setitem__((7, 1), np.nan),
                    "data/action", "NaN or infinite values, or beyond +-1e+30 (first at step 7)"),
    "linked chunk": (link_a_chunk, "data/action/0.0", "not a chunk file (a chunk is a regular file, not a link"),
    "huge in data": (lambda s: zarr.open_group(str(s), mode="r+")["data/action"].__setitem__((7, 1), 1e35),
                     "data/action", "NaN or infinite values, or beyond +-1e+30 (first at step 7)"),
}


@pytest.mark.parametrize("case", ZARR_CASES)
def test_a_damaged_store_is_refused_naming_file_and_key(tmp_path, case):
    damage, file, message = ZARR_CASES[case]
    store = tmp_path / "s.zarr"
    build_store(store)
    damage(store)
    with pytest.raises(CadenceError) as err:
        read_like_training(store)
    text = str(err.value)
    assert text.startswith(str(store)) and file in text and message in text and "\n" not in text, text


def test_bad_cached_statistics_are_recomputed(tmp_path):
    store = tmp_path / "s.zarr"
    build_store(store)
    expected = EpisodeStore.open(store).load(["action"])["action"]
    for bad in ([1.0], "x", [[1.0, 2.0]], {"a": 1}, None):
        attrs = json.loads((store / ".zattrs").read_text())
        attrs["stats"]["action"]["max"] = bad
        (store / ".zattrs").write_text(json.dumps(attrs))
        np.testing.assert_allclose(EpisodeStore.open(store).stats("action")["max"], expected.max(0))


# --- HDF5 (robomimic) ---------------------------------------------------------------------------
def replace(name, value):
    def edit(f):
        del f[name]
        f[name] = value
    return edit


def set_attr(name, key, value):
    def edit(f):
        f[name].attrs[key] = value
    return edit


def unallocated(f):
    del f["data/demo_1/actions"]
    f["data/demo_1"].create_dataset("actions", shape=(7, 10 ** 6), dtype="f8")   # no data written
    f["data/demo_1"].attrs["num_samples"] = 7


def external_copy(f, name):
    """``name`` rewritten as HDF5 external storage: its bytes in a file beside this one (any path could be named)."""
    values = f[name][()]
    raw = Path(f.filename).with_suffix(".raw")
    raw.write_bytes(values.tobytes())
    del f[name]
    f.create_dataset(name, shape=values.shape, dtype=values.dtype, external=[(str(raw), 0, values.nbytes)])


HDF5_CASES = {
    "demo is a dataset": (replace("data/demo_2", np.zeros(3)), "data/demo_2", "expected an HDF5 group"),
    "dangling link": (replace("data/demo_2/obs/object", h5py.SoftLink("/nowhere")),
                      "data/demo_2/obs/object", "unreadable"),
    "external link": (replace("data/demo_2/actions", h5py.ExternalLink("/etc/other.h5", "/x")),
                      "data/demo_2/actions", "a link to another file"),
    "missing obs": (lambda f: f["data/demo_4"].pop("obs"), "data/demo_4", "lacks 'actions' or 'obs'"),
    "num_samples a string": (set_attr("data/demo_3", "num_samples", "nine"), "data/demo_3",
                             "'num_samples' must be an integer"),
    "num_samples wrong": (set_attr("data/demo_3", "num_samples", 99), "data/demo_3",
                          "'num_samples' is 99 but 'actions' has 9 steps"),
    "num_samples huge": (set_attr("data/demo_3", "num_samples", 10 ** 15), "data/demo_3", "'num_samples' is"),
    "strings as obs": (replace("data/demo_0/obs/object", np.array([b"a"] * 5, dtype=object).astype("S1")),
                       "data/demo_0/obs/object", "not numbers"),
    "wrong length": (replace("data/demo_0/obs/object", np.zeros((4, 10))), "data/demo_0/obs/object",
                     "not 5 steps"),
    "per-step shape": (lambda f: f["data/demo_0/obs"].create_dataset("big", shape=(5, 10 ** 8), dtype="u1",
                                                                      chunks=(1, 1024)),
                       "data/demo_0/obs/big", "'per-step shape[0]' is 100000000"),
    "no data on disk": (unallocated, "data/demo_1/actions", "claims 56,000,000 bytes but holds 0 in the file"),
    "env_args not JSON": (set_attr("data", "env_args", "{not json"), "data", "'env_args' is not JSON"),
    "env_args NaN": (set_attr("data", "env_args", '{"x": NaN}'), "data", "'env_args' is not JSON"),
    "env_args a number": (set_attr("data", "env_args", 3), "data", "'env_args' must be a JSON string"),
    "mask numbers": (replace("mask/train", np.arange(3)), "mask/train", "expected a list of demo names"),
    "mask names of a megabyte": (replace("mask/train", np.array([b"x" * 10 ** 6] * 4)), "mask/train",
                                 "strings of at most 1024 bytes"),
    "data in another file": (lambda f: external_copy(f, "mask/train"), "mask/train", "keeps its data in other files"),
    "obs in another file": (lambda f: external_copy(f, "data/demo_0/obs/object"), "data/demo_0/obs/object",
                            "keeps its data in other files"),
    "a demo beyond 1e30": (lambda f: f["data/demo_2/actions"].__setitem__((0, 0), 1e39), "data/demo_2",
                           "beyond +-1e+30 as float64"),
}


@pytest.mark.parametrize("case", HDF5_CASES)
def test_a_bad_hdf5_file_is_refused_naming_file_and_object(tmp_path, case):
    mutate, name, message = HDF5_CASES[case]
    path = write_robomimic(tmp_path / "lift.hdf5", mutate=mutate)
    with pytest.raises(CadenceError) as err:
        import_robomimic(path, tmp_path / "out.zarr", progress=False)
    assert str(err.value).startswith(f"{path}: {name}") and message in str(err.value), str(err.value)
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.zarr.tmp").exists()


def test_a_corrupt_hdf5_file_is_refused_naming_it(tmp_path):
    path = write_robomimic(tmp_path / "lift.hdf5")
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for seed in range(12):                       # corrupt metadata blocks (B-trees, heaps) or data
        damaged = bytearray(raw)
        for i in rng.integers(0, len(raw), 16):
            damaged[i] ^= 0xFF
        copy = tmp_path / f"c{seed}.hdf5"
        copy.write_bytes(bytes(damaged))
        try:
            import_robomimic(copy, tmp_path / f"c{seed}.zarr", progress=False)
        except CadenceError as exc:
            assert str(exc).startswith(str(copy))


# --- LeRobot -------------------------------------------------------------------------------------
def edit_info(**values):
    def edit(root):
        info = json.loads((root / "meta/info.json").read_text())
        info.update(values)
        (root / "meta/info.json").write_text(json.dumps(info))
    return edit


def edit_feature(key, **values):
    def edit(root):
        info = json.loads((root / "meta/info.json").read_text())
        info["features"][key].update(values)
        (root / "meta/info.json").write_text(json.dumps(info))
    return edit


def edit_episode(**values):
    def edit(root):
        path = root / "meta/episodes.jsonl"
        lines = path.read_text().splitlines()
        record = json.loads(lines[0])
        record.update(values)
        lines[0] = json.dumps(record)            # json.dumps writes NaN as the bare NaN LeRobot files can hold
        path.write_text("\n".join(lines) + "\n")
    return edit


def set_column(root, name, values, kind):
    """Episode 0's ``name`` column rewritten with ``values`` of arrow type ``kind``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"float64": pa.float64(), "string": pa.string(), "list<float64>": pa.list_(pa.float64())}
    path = root / V2_DATA.format(episode_chunk=0, episode_index=0)
    table = pq.read_table(path)
    column = table.schema.get_field_index(name)
    pq.write_table(table.set_column(column, name, pa.array(values, types[kind])), path)


def nan_timestamp(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / V2_DATA.format(episode_chunk=0, episode_index=0)
    table = pq.read_table(path)
    column = table.schema.get_field_index("timestamp")
    pq.write_table(table.set_column(column, "timestamp", pa.array([0.0, np.nan, 0.2], pa.float32())), path)


LEROBOT_CASES = {
    "fps NaN": (lambda r: (r / "meta/info.json").write_text((r / "meta/info.json").read_text()
                                                            .replace('"fps": 10', '"fps": NaN')),
                "meta/info.json", "NaN is not a number JSON allows"),
    "fps a string": (edit_info(fps="10"), "meta/info.json", "'fps' must be a finite number"),
    "fps zero": (edit_info(fps=0), "meta/info.json", "'fps' is 0"),
    "total_episodes huge": (edit_info(total_episodes=10 ** 12), "meta/info.json", "'total_episodes' is"),
    "total_episodes a float": (edit_info(total_episodes=3.5), "meta/info.json",
                               "'total_episodes' must be an integer"),
    "total_frames negative": (edit_info(total_frames=-1), "meta/info.json", "'total_frames' is -1"),
    "chunks_size zero": (edit_info(chunks_size=0), "meta/info.json", "'chunks_size' is 0"),
    "feature not an object": (edit_info(features={"action": 3}), "meta/info.json", "'features.action'"),
    "shape huge": (edit_feature("action", shape=[10 ** 9]), "meta/info.json", "'features.action.shape[0]'"),
    "shape nested": (edit_feature("action", shape=[[2]]), "meta/info.json", "'features.action.shape[0]'"),
    "template widths": (edit_info(data_path="data/{episode_index:>1000000000}.parquet"), "meta/info.json",
                        "'data_path'"),
    "template attributes": (edit_info(data_path="{episode_index.__class__}.parquet"), "meta/info.json",
                            "'data_path'"),
    "template leaves the dataset": (edit_info(data_path="../../{episode_index}.parquet"), "meta/info.json",
                                    "leads out of"),
    "length NaN": (edit_episode(length=float("nan")), "meta/episodes.jsonl: line 1", "'length' must be an integer"),
    "length a float": (edit_episode(length=2.5), "meta/episodes.jsonl: line 1", "'length' must be an integer"),
    "length huge": (edit_episode(length=10 ** 13), "meta/episodes.jsonl: line 1", "'length' is 10000000000000"),
    "episode_index negative": (edit_episode(episode_index=-3), "meta/episodes.jsonl: line 1", "'episode_index' is -3"),
    "tasks a string": (edit_episode(tasks="pick"), "meta/episodes.jsonl: line 1", "'tasks' must be a list"),
    "task_index a string": (lambda r: (r / "meta/tasks.jsonl").write_text('{"task_index": "0", "task": "x"}\n'),
                            "meta/tasks.jsonl: line 1", "'task_index' must be an integer"),
    "timestamp NaN": (nan_timestamp, "episode_000000.parquet", "key 'timestamp' of episode 0 must be finite"),
    "episode_index NaN": (lambda r: set_column(r, "episode_index", [0.0, np.nan, 0.0], "float64"),
                          "episode_000000.parquet", "column 'episode_index' holds values that are not whole numbers"),
    "episode_index text": (lambda r: set_column(r, "episode_index", ["0", "0", "0"], "string"),
                           "episode_000000.parquet", "column 'episode_index' holds string, not integers"),
    "action beyond float32": (lambda r: set_column(r, "action", [[0.0, 0.0], [1e39, 0.0], [0.0, 0.0]],
                                                   "list<float64>"),
                              "episode_000000.parquet: episode 0", "beyond +-1e+30 as float32"),
}


@pytest.mark.parametrize("case", LEROBOT_CASES)
def test_bad_lerobot_metadata_is_refused_naming_file_and_key(tmp_path, case):
    mutate, file, message = LEROBOT_CASES[case]
    root = write_v21(tmp_path / "v21", lengths=(3, 4))
    mutate(root)
    with pytest.raises(CadenceError) as err:
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    assert file in str(err.value) and message in str(err.value), str(err.value)
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.zarr.tmp").exists()


def test_bad_lerobot_v3_episode_rows_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = write_v30(tmp_path / "v30", lengths=(3, 4))
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    for column, values, message in (("length", pa.array([3, None]), "row 1: 'length' must be an integer, got None"),
                                    ("videos/observation.images.top/from_timestamp", pa.array([0.0, np.nan]),
                                     "row 1: 'videos/observation.images.top/from_timestamp' must be a finite")):
        pq.write_table(table.set_column(table.schema.get_field_index(column), column, values), path)
        with pytest.raises(CadenceError, match=message) as err:
            import_lerobot(root, tmp_path / "out.zarr", progress=False)
        assert str(err.value).startswith(str(path))


# --- through the command line ---------------------------------------------------------------------
def run_cadence(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([str(CADENCE), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})


def assert_one_line_error(proc, command: str, *parts: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()           # progress bars before it, if any
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]] and lines[-1].startswith(f"cadence {command}: error: "), proc.stderr
    for part in parts:
        assert part in lines[-1]


def test_cadence_import_and_train_refuse_bad_files_in_one_line(tmp_path):
    root = write_v21(tmp_path / "v21", lengths=(3, 4))
    edit_episode(length=float("nan"))(root)
    proc = run_cadence("import", "format=lerobot", "source=v21", "out=v21.zarr", cwd=tmp_path)
    assert_one_line_error(proc, "import", "v21/meta/episodes.jsonl: line 1: 'length' must be an integer, got nan")

    write_robomimic(tmp_path / "lift.hdf5", mutate=set_attr("data/demo_3", "num_samples", "nine"))
    proc = run_cadence("import", "source=lift.hdf5", "out=lift.zarr", cwd=tmp_path)
    assert_one_line_error(proc, "import", "lift.hdf5: data/demo_3: 'num_samples' must be an integer")

    build_store(tmp_path / "bad.zarr")
    edit_json(tmp_path / "bad.zarr/data/action/.zarray", shape=[10 ** 12, 2])
    proc = run_cadence("train", "task.dataset=bad.zarr", "run_dir=run", "tracking=none", cwd=tmp_path)
    assert_one_line_error(proc, "train", "bad.zarr/data/action/.zarray: 'shape[0]' is 1000000000000")


def _stream_store(path: Path, codec, action: np.ndarray) -> Path:
    """A Diffusion Policy layout store written by zarr itself with a stream codec."""
    root = zarr.open_group(str(path), mode="w")
    root.create_dataset("data/action", data=action, chunks=(8, 2), compressor=codec)
    root.create_dataset("meta/episode_ends", data=np.array([10, len(action)], np.int64), compressor=None)
    return path


@pytest.mark.parametrize("codec", ["Zlib", "GZip", "BZ2", "LZMA"])
def test_stream_compressed_stores_read_within_a_chunk(tmp_path, codec):
    import numcodecs

    action = np.random.default_rng(0).standard_normal((24, 2)).astype(np.float32)
    store = EpisodeStore.open(_stream_store(tmp_path / "s.zarr", getattr(numcodecs, codec)(), action))
    assert store.n_episodes == 2
    np.testing.assert_array_equal(store.episode(1)["action"], action[10:])


def test_a_stream_codec_bomb_is_refused(tmp_path):
    import zlib

    import numcodecs

    action = np.zeros((24, 2), np.float32)
    path = _stream_store(tmp_path / "s.zarr", numcodecs.Zlib(), action)
    bomb = zlib.compress(bytes(2 ** 19), 9)                  # about 500 bytes inflating to 512 KiB
    assert len(bomb) < 1089                                  # small enough to pass as a chunk file
    (path / "data/action/0.0").write_bytes(bomb)
    with pytest.raises(CadenceError, match="data/action: .*zlib chunk inflates to more than a chunk's 64 bytes"):
        EpisodeStore.open(path).episode(0)


def test_lerobot_path_templates_take_widths_up_to_two_digits(tmp_path):
    from cadence.datasets.lerobot_meta import _format

    for spec, name in (("06d", "000003"), ("010d", "0000000003"), ("6d", "     3"), ("", "3")):
        info = {"data_path": f"data/{{episode_index:{spec}}}.parquet" if spec else "data/{episode_index}.parquet"}
        assert _format(tmp_path, "data_path", info, episode_index=3) == tmp_path / f"data/{name}.parquet"
    with pytest.raises(CadenceError, match="'data_path' .* does not format"):
        _format(tmp_path, "data_path", {"data_path": "data/{episode_index:0100d}.parquet"}, episode_index=3)


def test_episodes_with_no_frames_are_left_out_with_a_warning(tmp_path, caplog):
    import logging

    root = write_v30(tmp_path / "v30", lengths=(6, 0, 8))
    with caplog.at_level(logging.WARNING):
        store = import_lerobot(root, tmp_path / "out.zarr", progress=False)
    assert list(store.episode_lengths()) == [6, 8] and store.source["episodes"] == [0, 2]
    assert store.source["skipped_episodes"] == {"1": "no frames (length 0)"}
    assert "skipping 1 episode(s) with no frames (length 0): episode_index [1]" in caplog.text
    with pytest.raises(CadenceError, match=r"the selected episodes \[1\] have no frames: nothing to import"):
        import_lerobot(root, tmp_path / "none.zarr", progress=False, episodes=[1])
    assert not (tmp_path / "none.zarr").exists()
