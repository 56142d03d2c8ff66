"""Zipped stores (Diffusion Policy's and UMI's ``.zarr.zip``): read in place, checked like a directory."""
from __future__ import annotations

import json
import stat
import zipfile

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
