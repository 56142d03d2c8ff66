"""robomimic HDF5 files tampered the ways a review found (real files written by h5py, then patched
byte by byte where h5py would not write the lie): each refused in one line, quickly, before the
memory the lie claims is allocated."""
import json
import struct
import time

import h5py
import numpy as np
import pytest

from cadence.datasets.episode_store import StoreError
from cadence.datasets.hdf5_checks import MAX_VISITS, reading
from cadence.datasets.robomimic_import import import_robomimic
from cadence.untrusted import LIMITS

from .test_robomimic_import import write_robomimic


def refused(path, tmp_path, match):
    out = tmp_path / "out.zarr"
    start = time.perf_counter()
    with pytest.raises(StoreError, match=match):
        import_robomimic(path, out, progress=False)
    assert not out.exists()
    return time.perf_counter() - start


def test_groups_linking_the_next_one_twice_over_are_walked_a_bounded_number_of_times(tmp_path):
    """16 groups, each holding two hard links to the next: 2^15 paths from a 30 kB file."""
    def chain(f):
        groups = [f.create_group(f"chain/g{i}") for i in range(16)]
        for a, b in zip(groups, groups[1:]):
            a["l0"] = a["l1"] = b
        f["data/demo_0/obs"]["extra"] = groups[0]

    path = write_robomimic(tmp_path / "dag.hdf5", mutate=chain)
    took = refused(path, tmp_path, f"demo_0/obs/extra.*: more than {MAX_VISITS:,} groups and datasets to walk")
    assert took < 30


def test_a_chunk_index_naming_one_stored_chunk_many_times_is_refused(tmp_path):
    """HDF5's storage size counts every index entry: 64 entries pointing at one 64 kB chunk
    claimed 4 MB "on disk" from a file of about 70 kB."""
    steps, width = 64, 2 ** 16

    def one_real_chunk(f):
        demo = f["data/demo_0"]
        del demo["obs/agentview_image"], demo["next_obs/agentview_image"]
        n = demo["actions"].shape[0]
        del demo["actions"]
        demo.attrs["num_samples"] = steps
        for key in list(demo.keys()) + [f"obs/{k}" for k in demo["obs"]] + [f"next_obs/{k}" for k in demo["next_obs"]]:
            if isinstance(demo[key], h5py.Dataset) and demo[key].shape[:1] == (n,):
                del demo[key]
        demo.create_dataset("actions", data=np.zeros((steps, 2)))
        ds = demo.create_dataset("obs/image", shape=(steps, width), dtype="u1", chunks=(1, width))
        ds[0:1] = 3
        for t in range(1, steps):
            ds.id.write_direct_chunk((t, 0), b"\x03" * 8)        # a stub per chunk: an index entry of its own

    path = write_robomimic(tmp_path / "alias.hdf5", lengths=[3], mutate=one_real_chunk)
    with h5py.File(path, "r") as f:
        first = f["data/demo_0/obs/image"].id.get_chunk_info(0).byte_offset
    raw, patched = bytearray(path.read_bytes()), 0
    at = raw.find(b"TREE")
    while at >= 0:                          # v1 B-tree leaves of chunks: point every entry at the first chunk
        if raw[at + 4] == 1 and raw[at + 5] == 0:
            for k in range(struct.unpack_from("<H", raw, at + 6)[0]):
                struct.pack_into("<I", raw, at + 24 + 40 * k, width)
                struct.pack_into("<Q", raw, at + 24 + 40 * k + 32, first)
                patched += 1
        at = raw.find(b"TREE", at + 4)
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        assert patched == steps and f["data/demo_0/obs/image"].id.get_storage_size() == steps * width
    refused(path, tmp_path, r"demo_0/obs/image: chunks that share bytes in the file")


def test_variable_length_mask_names_are_read_one_at_a_time(tmp_path):
    """200 names that all point at one 1 MiB string: 200 MiB once read together."""
    count, size = 200, 2 ** 20

    def long_names(f):
        del f["mask/train"]
        names = np.array([b"x" * size] + [b"demo_0"] * (count - 1), dtype=object)
        f.create_dataset("mask/train", data=names, dtype=h5py.string_dtype("ascii"))

    path = write_robomimic(tmp_path / "mask.hdf5", lengths=[3, 4], mutate=long_names)
    with h5py.File(path, "r") as f:
        offset = f["mask/train"].id.get_offset()
    raw = bytearray(path.read_bytes())
    first = struct.unpack_from("<IQI", raw, offset)               # length, heap address, index
    assert first[0] == size
    for i in range(1, count):
        struct.pack_into("<IQI", raw, offset + 16 * i, *first)
    path.write_bytes(bytes(raw))
    assert path.stat().st_size < 2 * size
    refused(path, tmp_path, r"mask/train: entry 0 is not a demo name of at most 1024 bytes")


def test_an_attribute_holding_many_strings_is_refused_before_it_is_read(tmp_path):
    def many(f):
        f["data"].attrs["env_args"] = np.array([json.dumps({"env_name": "Lift"})] * 50, dtype=object)

    path = write_robomimic(tmp_path / "attrs.hdf5", lengths=[3], mutate=many)
    refused(path, tmp_path, r"data: attribute 'env_args' must be one number or string, got object \(50,\)")


def test_metadata_too_large_for_the_store_is_refused_before_any_demo_is_imported(tmp_path, monkeypatch):
    def large(f):
        f["data"].attrs["env_args"] = json.dumps({"env_name": "Lift", "notes": "x" * 40_000})

    monkeypatch.setattr("cadence.datasets.hdf5_checks.SOURCE_BYTES", 30_000)
    path = write_robomimic(tmp_path / "big.hdf5", lengths=[3, 4], mutate=large)
    refused(path, tmp_path, r"big.hdf5: the metadata kept from it \(the file's own attributes\) takes")


def test_a_demo_past_the_episode_budget_is_refused_naming_the_dataset(tmp_path, monkeypatch):
    path = write_robomimic(tmp_path / "ok.hdf5", lengths=[3, 4])
    monkeypatch.setitem(LIMITS, "episode_bytes", 200)
    refused(path, tmp_path, r"data/demo_0: .*data/demo_0/.* brings the episode to [0-9,]+ bytes as decoded, "
                            "more than the 200")


def test_memory_the_machine_lacks_is_one_line_naming_the_object():
    with pytest.raises(StoreError, match="data/demo_0/obs/image: does not fit in this machine's free memory"):
        with reading("data/demo_0/obs/image"):
            raise MemoryError
