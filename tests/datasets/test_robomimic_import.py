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


# --- Isaac Lab's recorder (HDF5DatasetFileHandler): nested groups, success, initial_state ---------
ISAAC_LENGTHS = [6, 4, 5]
ISAAC_ENV_ARGS = {"env_name": "Isaac-Stack-Cube-Franka-IK-Rel-v0", "type": 2}


def isaac_values(i, n):
    """Path below the demo -> values, as Isaac Lab's recorders fill EpisodeData."""
    rng = np.random.default_rng(100 + i)
    return {"actions": rng.uniform(-1, 1, (n, 7)).astype(np.float32),
            "processed_actions": rng.normal(size=(n, 9)).astype(np.float32),
            "obs/policy/joint_pos": rng.normal(size=(n, 9)).astype(np.float32),
            "obs/policy/eef_pos": rng.normal(size=(n, 3)).astype(np.float32),
            "obs/datagen_info/object_pose/cube": rng.normal(size=(n, 4, 4)).astype(np.float32),
            "obs/table_cam": rng.integers(0, 255, (n, 6, 8, 3), dtype=np.uint8),
            "states/articulation/robot/joint_position": rng.normal(size=(n, 9)).astype(np.float32),
            "states/articulation/robot/joint_velocity": rng.normal(size=(n, 9)).astype(np.float32),
            "states/rigid_object/cube/root_pose": rng.normal(size=(n, 7)).astype(np.float32),
            "states/rigid_object/cube/root_velocity": rng.normal(size=(n, 6)).astype(np.float32)}


def isaac_initial(i):
    rng = np.random.default_rng(200 + i)
    return {"initial_state/articulation/robot/joint_position": rng.normal(size=(1, 9)).astype(np.float32),
            "initial_state/articulation/robot/joint_velocity": np.zeros((1, 9), np.float32),
            "initial_state/rigid_object/cube/root_pose": rng.normal(size=(1, 7)).astype(np.float32)}


def write_isaaclab(path, lengths=ISAAC_LENGTHS, mutate=None):
    """The file Isaac Lab's HDF5DatasetFileHandler.create + write_episode produce (gzip datasets)."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = 0
        data.attrs["env_args"] = json.dumps(ISAAC_ENV_ARGS)
        for i, n in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = n
            demo.attrs["seed"] = 40 + i
            demo.attrs["success"] = i != 1
            for key, values in {**isaac_values(i, n), **isaac_initial(i)}.items():
                demo.create_dataset(key, data=values, compression="gzip")
            data.attrs["total"] += n
        if mutate:
            mutate(f)
    return path


ISAAC_KEYS = {"action": "actions", "processed_actions": "processed_actions",
              "policy.joint_pos": "obs/policy/joint_pos", "policy.eef_pos": "obs/policy/eef_pos",
              "datagen_info.object_pose.cube": "obs/datagen_info/object_pose/cube", "table_cam": "obs/table_cam",
              "states.articulation.robot.joint_position": "states/articulation/robot/joint_position",
              "states.articulation.robot.joint_velocity": "states/articulation/robot/joint_velocity",
              "states.rigid_object.cube.root_pose": "states/rigid_object/cube/root_pose",
              "states.rigid_object.cube.root_velocity": "states/rigid_object/cube/root_velocity"}


def test_an_isaac_lab_file_flattens_nested_groups_and_keeps_attributes_and_initial_state(tmp_path):
    path = write_isaaclab(tmp_path / "stack.hdf5")
    store = import_robomimic(path, tmp_path / "stack.zarr", progress=False)
    assert store.keys == sorted(ISAAC_KEYS) and list(store.episode_lengths()) == ISAAC_LENGTHS
    source = store.source
    assert source["env_args"] == ISAAC_ENV_ARGS and source["data_attrs"] == {"total": sum(ISAAC_LENGTHS)}
    with h5py.File(path, "r") as f:                     # the source, read independently
        for i in range(len(ISAAC_LENGTHS)):
            demo, ep = f[f"data/demo_{i}"], store.episode(i)
            for key, inside in ISAAC_KEYS.items():
                np.testing.assert_array_equal(ep[key], demo[inside][()], err_msg=key)
                assert ep[key].dtype == demo[inside].dtype
            entry = source["demos"][i]
            assert entry["name"] == f"demo_{i}"
            assert entry["attrs"] == {"num_samples": int(demo.attrs["num_samples"]), "seed": int(demo.attrs["seed"]),
                                      "success": bool(demo.attrs["success"])}
            assert type(entry["attrs"]["success"]) is bool
            initial = entry["initial_state"]
            for inside in isaac_initial(i):
                node = initial
                for name in inside.split("/")[1:]:
                    node = node[name]
                np.testing.assert_array_equal(np.asarray(node, np.float32), demo[inside][()], err_msg=inside)
    assert source["demos"][1]["attrs"]["success"] is False


def test_an_obs_dataset_a_collision_and_a_short_state_are_handled(tmp_path):
    def flat_obs(f):                                    # concatenate_terms=True: obs is one dataset
        for i, n in enumerate(ISAAC_LENGTHS):
            del f[f"data/demo_{i}/obs"]
            f[f"data/demo_{i}"].create_dataset("obs", data=np.full((n, 5), float(i)))
    store = import_robomimic(write_isaaclab(tmp_path / "flat.hdf5", mutate=flat_obs), tmp_path / "flat.zarr",
                             progress=False)
    assert "obs" in store.keys and "policy.joint_pos" not in store.keys
    np.testing.assert_array_equal(store.episode(2)["obs"], np.full((5, 5), 2.0))

    def collide(f):
        f["data/demo_1/obs"].create_dataset("policy.joint_pos", data=np.zeros((4, 9)))
    path = write_isaaclab(tmp_path / "twice.hdf5", mutate=collide)
    with pytest.raises(StoreError) as err:
        import_robomimic(path, tmp_path / "twice.zarr", progress=False)
    message = str(err.value)
    assert "\n" not in message and "data/demo_1/obs/policy.joint_pos" in message
    assert "data/demo_1/obs/policy/joint_pos" in message and "store key 'policy.joint_pos'" in message
    assert not (tmp_path / "twice.zarr").exists()

    def short(f):
        del f["data/demo_2/states/rigid_object/cube/root_pose"]
        f["data/demo_2/states/rigid_object/cube"].create_dataset("root_pose", data=np.zeros((4, 7)))
    path = write_isaaclab(tmp_path / "short.hdf5", mutate=short)
    with pytest.raises(StoreError, match=r"short.hdf5: data/demo_2/states/rigid_object/cube/root_pose: has shape "
                                         r"\(4, 7\), not 5 steps"):
        import_robomimic(path, tmp_path / "short.zarr", progress=False)


def test_initial_state_and_nesting_are_bounded(tmp_path):
    def huge_initial(f):
        f["data/demo_0/initial_state"].create_dataset("big", data=np.zeros((1, 70_000), np.float32))
    path = write_isaaclab(tmp_path / "big.hdf5", mutate=huge_initial)
    with pytest.raises(StoreError, match="data/demo_0/initial_state/big: has shape"):
        import_robomimic(path, tmp_path / "big.zarr", progress=False)

    def deep(f):
        group = f["data/demo_0/states"]
        for i in range(20):
            group = group.create_group(f"g{i}")
        group.create_dataset("x", data=np.zeros((6, 1)))
    path = write_isaaclab(tmp_path / "deep.hdf5", mutate=deep)
    with pytest.raises(StoreError, match="nested more than 16 deep"):
        import_robomimic(path, tmp_path / "deep.zarr", progress=False)


def test_episodes_picks_demos_by_number(tmp_path):
    path = write_robomimic(tmp_path / "lift.hdf5")
    store = import_robomimic(path, tmp_path / "some.zarr", episodes=[11, 2, "demo_0"], progress=False)
    assert [d["name"] for d in store.source["demos"]] == ["demo_0", "demo_2", "demo_11"]
    assert list(store.episode_lengths()) == [LENGTHS[0], LENGTHS[2], LENGTHS[11]]
    for i, number in enumerate((0, 2, 11)):
        np.testing.assert_array_equal(store.episode(i)["action"], demo_values(number, LENGTHS[number])["actions"])
    with pytest.raises(StoreError, match="has no demo_12"):
        import_robomimic(path, tmp_path / "none.zarr", episodes=[12], progress=False)
    with pytest.raises(StoreError, match="more than once"):
        import_robomimic(path, tmp_path / "none.zarr", episodes=[1, 1], progress=False)
    assert not (tmp_path / "none.zarr").exists()


def test_model_files_are_kept_once_each_and_long_or_array_attributes_are_named(tmp_path):
    scenes = ["<mujoco model='a'/>", "<mujoco model='b'/>"]

    def scenes_and_attrs(f):
        for i in range(12):
            f[f"data/demo_{i}"].attrs["model_file"] = scenes[i % 2 if i < 4 else 0]
        f["data/demo_0"].attrs["note"] = "x" * 5000
        f["data/demo_0"].attrs["vector"] = np.arange(3)
        f["data/demo_0"].attrs["label"] = "pick"
    path = write_robomimic(tmp_path / "lift.hdf5", mutate=scenes_and_attrs)
    source = import_robomimic(path, tmp_path / "lift.zarr", progress=False).source
    assert source["model_files"] == scenes
    assert [d["model_file"] for d in source["demos"]] == [0, 1, 0, 1] + [0] * 8
    assert source["demos"][0]["attrs"] == {"num_samples": LENGTHS[0], "label": "pick"}
    assert sorted(source["demos"][0]["dropped_attrs"]) == ["note", "vector"]


def test_cadence_import_command_with_episodes(tmp_path):
    write_isaaclab(tmp_path / "stack.hdf5")
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=robomimic", "source=stack.hdf5",
                           "out=stack.zarr", "episodes=[0,2]"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    store = EpisodeStore.open(tmp_path / "stack.zarr")
    assert [d["name"] for d in store.source["demos"]] == ["demo_0", "demo_2"]
    assert list(store.episode_lengths()) == [ISAAC_LENGTHS[0], ISAAC_LENGTHS[2]]


def test_metadata_larger_than_a_store_may_hold_is_refused_at_the_demo_that_overflows(tmp_path, monkeypatch):
    import cadence.datasets.hdf5_checks as checks

    def scenes(f):
        for i in range(12):
            f[f"data/demo_{i}"].attrs["model_file"] = f"<mujoco model='{i}'/>" + " " * 3000
    path = write_robomimic(tmp_path / "lift.hdf5", mutate=scenes)
    monkeypatch.setattr(checks, "SOURCE_BYTES", 10_000)
    with pytest.raises(StoreError, match=r"lift.hdf5: the metadata kept from it .* more than the 10,000"):
        import_robomimic(path, tmp_path / "lift.zarr", progress=False)
    assert not (tmp_path / "lift.zarr").exists()
    store = import_robomimic(path, tmp_path / "lift.zarr", episodes=[0, 1], progress=False)
    assert len(store.source["model_files"]) == 2
