"""Zipped stores (Diffusion Policy's and UMI's ``.zarr.zip``): read in place, checked like a directory."""
from __future__ import annotations

import json
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
import zarr

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.untrusted import LIMITS, UntrustedFileError

from .image_stores import image_store


def zipped(directory, out):
    """``directory`` (a zarr store) copied into a zip by zarr's own ZipStore."""
    target = zarr.ZipStore(str(out), mode="w")
    zarr.copy_store(zarr.DirectoryStore(str(directory)), target)
    target.close()
    return out


def rezip(source, out, replace: dict | None = None, modes: dict | None = None, compress=zipfile.ZIP_STORED):
    """``source``'s members written again by :mod:`zipfile`, some replaced or given a file mode."""
    replace, modes = replace or {}, modes or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w", compress) as dst:
        for info in src.infolist():
            data = replace.get(info.filename, src.read(info))
            entry = zipfile.ZipInfo(info.filename)
            entry.compress_type = compress
            entry.external_attr = modes.get(info.filename, stat.S_IFREG | 0o644) << 16
            dst.writestr(entry, data)
    return out


def test_a_zipped_store_reads_as_its_directory_and_only_reads(tmp_path):
    written = image_store(tmp_path / "s.zarr", "jpegxl")
    store = EpisodeStore.open(zipped(tmp_path / "s.zarr", tmp_path / "s.zarr.zip"))
    assert store.keys == ["action", "img", "state"] and list(store.episode_ends) == [4, 10]
    for key, values in store.load().items():
        np.testing.assert_array_equal(values, written[key])
    np.testing.assert_allclose(store.stats("state")["mean"], written["state"].astype(np.float64).mean(0), rtol=1e-6)
    with pytest.raises(StoreError, match="s.zarr.zip: a zipped store is read only"):
        EpisodeStore.open(tmp_path / "s.zarr.zip", mode="a")
    with pytest.raises(StoreError, match="read-only"):
        store.set_source({"format": "zarr"})


def test_a_link_member_is_not_a_chunk(tmp_path):
    image_store(tmp_path / "s.zarr.zip")
    rezip(tmp_path / "s.zarr.zip", tmp_path / "l.zarr.zip", replace={"data/state/0.0": b"/etc/passwd"},
          modes={"data/state/0.0": stat.S_IFLNK | 0o777})
    with pytest.raises(UntrustedFileError, match=r"l.zarr.zip:data/state/0.0: not a chunk file"):
        EpisodeStore.open(tmp_path / "l.zarr.zip")


def test_a_member_larger_than_a_chunk_is_refused_before_it_is_inflated(tmp_path):
    image_store(tmp_path / "s.zarr.zip")
    rezip(tmp_path / "s.zarr.zip", tmp_path / "b.zarr.zip", replace={"data/state/0.0": bytes(50 * 2 ** 20)},
          compress=zipfile.ZIP_DEFLATED)
    assert (tmp_path / "b.zarr.zip").stat().st_size < 2 ** 20
    with pytest.raises(UntrustedFileError, match=r"b.zarr.zip:data/state/0.0: not a chunk file"):
        EpisodeStore.open(tmp_path / "b.zarr.zip")


def test_metadata_in_a_zip_is_read_within_bounds(tmp_path, monkeypatch):
    image_store(tmp_path / "s.zarr.zip")
    meta = {"zarr_format": 2, "shape": [10 ** 13, 3], "chunks": [10, 3], "dtype": "<f4", "compressor": None,
            "fill_value": 0, "order": "C", "filters": None}
    rezip(tmp_path / "s.zarr.zip", tmp_path / "m.zarr.zip", replace={"data/state/.zarray": json.dumps(meta).encode()})
    with pytest.raises(UntrustedFileError, match=r"m.zarr.zip:data/state/.zarray: 'shape\[0\]'"):
        EpisodeStore.open(tmp_path / "m.zarr.zip")
    monkeypatch.setitem(LIMITS, "json_bytes", 16)
    with pytest.raises(UntrustedFileError, match=r"s.zarr.zip:.zgroup: 24 bytes, more than the 16"):
        EpisodeStore.open(tmp_path / "s.zarr.zip")


def test_a_central_directory_beyond_the_limit_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    image_store(tmp_path / "s.zarr.zip")
    monkeypatch.setitem(LIMITS, "zip_directory_bytes", 512)
    with pytest.raises(UntrustedFileError, match=r"s.zarr.zip: its central directory is [\d,]+ bytes, more than 512"):
        EpisodeStore.open(tmp_path / "s.zarr.zip")


@pytest.mark.parametrize("damage, match", [
    (lambda data: b"not a zip at all", "not a zip"),
    (lambda data: data[: len(data) // 2], "not a zip"),
])
def test_a_file_that_is_not_a_zip_is_one_line(tmp_path, damage, match):
    image_store(tmp_path / "s.zarr.zip")
    (tmp_path / "d.zarr.zip").write_bytes(damage((tmp_path / "s.zarr.zip").read_bytes()))
    with pytest.raises(UntrustedFileError, match=f"d.zarr.zip: {match}"):
        EpisodeStore.open(tmp_path / "d.zarr.zip")


def test_a_corrupt_member_is_one_line_naming_the_array(tmp_path):
    image_store(tmp_path / "s.zarr.zip")
    data = bytearray((tmp_path / "s.zarr.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "s.zarr.zip") as z:
        info = z.getinfo("data/state/0.0")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start: start + 8] = bytes(a ^ 0xFF for a in data[start: start + 8])       # the CRC no longer holds
    (tmp_path / "c.zarr.zip").write_bytes(bytes(data))
    with pytest.raises(UntrustedFileError, match=r"c.zarr.zip/data/state: cannot read \(BadZipFile"):
        EpisodeStore.open(tmp_path / "c.zarr.zip").load(["state"])


def test_train_on_a_zipped_store_through_the_command_line(tmp_path, monkeypatch):
    from cadence.cli import main

    image_store(tmp_path / "umi.zarr.zip", "jpegxl", episodes=(12, 14, 13, 15))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cadence"])
    run_dir = tmp_path / "run"
    small = ["train.steps=2", "train.batch_size=8", "train.eval_every=2", "train.warmup_steps=1",
             "policy.pred_horizon=8", "policy.exec_horizon=4", "policy.down_dims=[16,32]",
             "policy.obs_feature_dim=16", "policy.level_embed_dim=16", "policy.sample_steps=2", "tracking=none"]
    assert main(["train", "task=store", "task.dataset=umi.zarr.zip", "task.fps=10", "task.obs_keys=[state]",
                 *small, f"run_dir={run_dir}"]) == 0
    offline = json.loads((run_dir / "eval-step2" / "eval.json").read_text())["offline"]
    assert np.isfinite(offline["l1"])


def raw_zip(path, members: dict):
    """A zip written byte by byte: ``members`` name -> (data as stored, method, declared size, crc)."""
    body, directory = bytearray(), bytearray()
    for name, (data, method, size, crc) in members.items():
        encoded, at = name.encode(), len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size,
                            len(encoded), 0) + encoded + data
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x0314, 20, 0, method, 0, 0, crc, len(data), size,
                                 len(encoded), 0, 0, 0, 0, 0o100644 << 16, at) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), len(body), 0)
    path.write_bytes(bytes(body) + bytes(directory) + end)
    return path


def stored(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {i.filename: (z.read(i), zipfile.ZIP_STORED, i.file_size, i.CRC) for i in z.infolist()}


PEAK_OPEN = """
import resource, sys
from cadence.datasets.episode_store import EpisodeStore
from cadence.errors import CadenceError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    EpisodeStore.open(sys.argv[1]).load()
    print("read")
except CadenceError as exc:
    print(str(exc))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_member_is_never_inflated_past_the_size_it_declares(tmp_path):
    image_store(tmp_path / "s.zarr.zip")
    members = stored(tmp_path / "s.zarr.zip")
    group = members[".zgroup"][0]
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)        # what follows the group: 256 MiB of spaces
    bomb = deflate.compress(group) + b"".join(deflate.compress(b" " * 2 ** 20) for _ in range(256)) + deflate.flush()
    members[".zgroup"] = (bomb, zipfile.ZIP_DEFLATED, len(group), zlib.crc32(group))
    raw_zip(tmp_path / "bomb.zarr.zip", members)
    assert (tmp_path / "bomb.zarr.zip").stat().st_size < 2 ** 20
    done = subprocess.run([sys.executable, "-c", PEAK_OPEN, str(tmp_path / "bomb.zarr.zip")], capture_output=True,
                          text=True, timeout=120, check=True)
    message, grown_kib = done.stdout.strip().splitlines()
    assert int(grown_kib) < 32 * 1024, message          # zipfile's read() inflated all 256 MiB


def test_members_compressed_other_than_stored_or_deflated_are_refused(tmp_path):
    image_store(tmp_path / "s.zarr")
    with zipfile.ZipFile(tmp_path / "bz.zarr.zip", "w", zipfile.ZIP_BZIP2) as z:   # bzip2 inflates whole
        for path in sorted((tmp_path / "s.zarr").rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(tmp_path / "s.zarr").as_posix())
    with pytest.raises(UntrustedFileError, match="bz.zarr.zip:.*compressed other than stored / deflated"):
        EpisodeStore.open(tmp_path / "bz.zarr.zip")


def test_a_zip64_directory_is_bounded_as_zipfile_reads_it(tmp_path, monkeypatch):
    """The 32-bit end record says 46 bytes; the zip64 record zipfile reads says the real size."""
    image_store(tmp_path / "s.zarr.zip")
    members = stored(tmp_path / "s.zarr.zip")
    members.update({f"x/{i}": (b"", 0, 0, 0) for i in range(300)})
    raw = raw_zip(tmp_path / "plain.zip", members).read_bytes()
    end = raw.rfind(b"PK\x05\x06")
    _, _, _, disk, total, size, offset, _ = struct.unpack_from("<IHHHHIIH", raw, end)
    z64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, total, total, size, offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, end, 1)
    (tmp_path / "z64.zarr.zip").write_bytes(raw[:end] + z64 + locator
                                            + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, disk, total, 46, offset, 0))
    assert EpisodeStore.open(tmp_path / "z64.zarr.zip").n_episodes == 2          # zipfile reads it
    monkeypatch.setitem(LIMITS, "zip_directory_bytes", size - 1)
    with pytest.raises(UntrustedFileError, match=f"its central directory is {size:,} bytes"):
        EpisodeStore.open(tmp_path / "z64.zarr.zip")


def test_an_array_name_zarr_reads_as_another_path_is_refused(tmp_path):
    """zarr reads data/x\\y as data/x/y: the checks would see one array, zarr open another."""
    image_store(tmp_path / "s.zarr")
    shutil.copytree(tmp_path / "s.zarr" / "data" / "state", tmp_path / "s.zarr" / "data" / "x\\y")   # checked
    shutil.copytree(tmp_path / "s.zarr" / "data" / "img", tmp_path / "s.zarr" / "data" / "x" / "y")   # opened
    with pytest.raises(StoreError, match=r"data/'x\\\\y' is not an array name"):
        EpisodeStore.open(tmp_path / "s.zarr")
    image_store(tmp_path / "z.zarr.zip")
    members = stored(tmp_path / "z.zarr.zip")
    members["data/x\\y/.zarray"] = members["data/state/.zarray"]
    with pytest.raises(UntrustedFileError, match="a backslash in its name"):
        EpisodeStore.open(raw_zip(tmp_path / "b.zarr.zip", members))


def test_a_link_inside_a_directory_store_is_refused(tmp_path):
    image_store(tmp_path / "s.zarr")
    image_store(tmp_path / "elsewhere.zarr", seed=1)
    (tmp_path / "s.zarr" / "data" / "outside").symlink_to(tmp_path / "elsewhere.zarr" / "data" / "state")
    with pytest.raises(UntrustedFileError, match=r"s.zarr/data/outside: a link inside the store"):
        EpisodeStore.open(tmp_path / "s.zarr")


def test_chunk_names_count_once_in_zarr_spelling(tmp_path):
    """"0", "00" and "000" are one chunk index spelled three ways; zarr reads only "0"."""
    image_store(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / "data" / "state" / "0.0"
    for alias in ("00.0", "000.0", "0.00"):
        shutil.copy(chunk, chunk.with_name(alias))
    chunk.unlink()
    with pytest.raises(UntrustedFileError, match=r"data/state: 1 of the 1 chunks holding its first 10 rows"):
        EpisodeStore.open(tmp_path / "s.zarr")


def test_more_arrays_than_the_limit_are_refused(tmp_path, monkeypatch):
    image_store(tmp_path / "s.zarr.zip")
    monkeypatch.setitem(LIMITS, "store_keys", 2)
    with pytest.raises(StoreError, match=r"s.zarr.zip: 3 arrays under data/, more than 2"):
        EpisodeStore.open(tmp_path / "s.zarr.zip")


def test_an_integer_too_large_for_a_float_is_one_line(tmp_path):
    image_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / ".zattrs").write_text('{"fps": 1' + "0" * 400 + "}")
    with pytest.raises(UntrustedFileError, match=r"'fps' must be a finite number"):
        EpisodeStore.open(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / ".zattrs").write_text(json.dumps({"stats": {"state": {
        "n_steps": 10, **{s: [1e10] * 3 for s in ("min", "max", "mean")}, "std": [int("9" * 400)] * 3}}}))
    store = EpisodeStore.open(tmp_path / "s.zarr")          # a cached statistic it cannot read is recomputed
    assert np.isfinite(store.stats("state")["std"]).all()


@pytest.mark.parametrize("layout", ["s.zarr", "s.zarr.zip"])
def test_a_group_that_is_also_an_array_is_refused(tmp_path, layout):
    """zarr opens data/ as an array when it holds a .zarray: unchecked, of any size."""
    image_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "data" / ".zarray").write_text((tmp_path / "s.zarr" / "data" / "state" / ".zarray").read_text())
    path = tmp_path / "s.zarr" if layout == "s.zarr" else zipped(tmp_path / "s.zarr", tmp_path / layout)
    with pytest.raises(StoreError, match="'data' is both a group and an array"):
        EpisodeStore.open(path)
