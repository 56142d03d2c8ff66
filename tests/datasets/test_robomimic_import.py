"""robomimic HDF5 -> episode store, on a real HDF5 file in robomimic's layout."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.robomimic_import import import_robomimic

LENGTHS = [5, 7, 3, 9, 4, 6, 8, 5, 3, 7, 10, 4]      # 12 demos: demo_10 / demo_11 sort after demo_9
ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}


def demo_values(i, n):
    rng = np.random.default_rng(i)
    return {"actions": rng.uniform(-1, 1, (n, 7)), "states": rng.normal(size=(n, 10)),
            "rewards": (np.arange(n) == n - 1).astype(np.float64), "dones": (np.arange(n) == n - 1).astype(np.int64),
            "obs/robot0_eef_pos": rng.normal(size=(n, 3)), "obs/object": rng.normal(size=(n, 10)).astype(np.float32),
            "obs/agentview_image": rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)}


def write_robomimic(path, lengths=LENGTHS, mutate=None):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ENV_ARGS)
        data.attrs["total"] = sum(lengths)
        for i, n in reversed(list(enumerate(lengths))):        # written out of order on purpose
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = n
            for key, values in demo_values(i, n).items():
                demo.create_dataset(key, data=values)
                if key.startswith("obs/"):
                    demo.create_dataset("next_" + key, data=values)
        f.create_group("mask").create_dataset("train", data=np.array([b"demo_0", b"demo_1"]))
        if mutate:
            mutate(f)
    return path


def test_every_demo_becomes_an_episode_in_numeric_order_with_every_key(tmp_path):
    store = import_robomimic(write_robomimic(tmp_path / "lift.hdf5"), tmp_path / "lift.zarr", progress=False)
    assert store.n_episodes == 12 and list(store.episode_lengths()) == LENGTHS
    assert store.keys == ["action", "agentview_image", "done", "object", "reward", "robot0_eef_pos", "sim_state"]
    assert store.fps == 20.0
    for i in (0, 9, 10, 11):
        ep, ref = store.episode(i), demo_values(i, LENGTHS[i])
        np.testing.assert_array_equal(ep["action"], ref["actions"])
        np.testing.assert_array_equal(ep["sim_state"], ref["states"])
        np.testing.assert_array_equal(ep["agentview_image"], ref["obs/agentview_image"])
        np.testing.assert_array_equal(ep["object"], ref["obs/object"])
        assert ep["agentview_image"].dtype == np.uint8 and ep["object"].dtype == np.float32
    source = store.source
    assert source["format"] == "robomimic" and source["env_args"] == ENV_ARGS
    assert source["masks"] == {"train": ["demo_0", "demo_1"]}


def test_refuses_to_overwrite_and_leaves_nothing_behind_on_a_bad_file(tmp_path):
    path = write_robomimic(tmp_path / "lift.hdf5")
    out = tmp_path / "lift.zarr"
    import_robomimic(path, out, progress=False)
    with pytest.raises(StoreError, match="already exists"):
        import_robomimic(path, out, progress=False)
    import_robomimic(path, out, overwrite=True, progress=False)

    bad = write_robomimic(tmp_path / "bad.hdf5", mutate=lambda f: f["data/demo_5"].pop("actions"))
    with pytest.raises(StoreError, match="demo_5 lacks 'actions'"):
        import_robomimic(bad, tmp_path / "bad.zarr", progress=False)
    assert not (tmp_path / "bad.zarr").exists() and not list(tmp_path.glob("*.tmp"))

    nan = write_robomimic(tmp_path / "nan.hdf5")
    with h5py.File(nan, "a") as f:
        f["data/demo_3/obs/robot0_eef_pos"][1, 0] = np.nan
    with pytest.raises(StoreError, match="robot0_eef_pos"):
        import_robomimic(nan, tmp_path / "nan.zarr", progress=False)
    assert not (tmp_path / "nan.zarr").exists()


def test_not_robomimic_files_are_named_in_the_error(tmp_path):
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="junk.hdf5"):
        import_robomimic(tmp_path / "junk.hdf5", tmp_path / "a.zarr", progress=False)
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("stuff")
    with pytest.raises(StoreError, match="no 'data' group"):
        import_robomimic(tmp_path / "empty.hdf5", tmp_path / "b.zarr", progress=False)


def test_cadence_import_command(tmp_path):
    write_robomimic(tmp_path / "lift.hdf5", lengths=[4, 5])
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "source=lift.hdf5", "out=data/lift.zarr"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "imported 2 episodes (9 steps" in proc.stdout
    assert EpisodeStore.open(tmp_path / "data" / "lift.zarr").n_episodes == 2
    again = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "source=lift.hdf5", "out=data/lift.zarr"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists" in again.stderr
