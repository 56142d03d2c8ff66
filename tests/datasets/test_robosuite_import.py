"""Raw robosuite demo.hdf5 -> episode store, on files in robosuite's own layout.

The recorded fixture is made by robosuite itself: a Lift environment wrapped in robosuite's
``DataCollectionWrapper`` takes a few random actions per demo, and robosuite's
``gather_demonstrations_as_hdf5`` (scripts/collect_human_demonstrations.py) writes demo.hdf5
(its success filter passed by declaring every demo successful). While recording, the test keeps
what the environment observes at each saved state, which the replay must reproduce.
"""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.robosuite_import import check_model_xml, import_robosuite

STEPS = 5
NOT_FROM_STATE = ("robot0_joint_acc", "robot0_proprio-state")   # depend on the step's controls (qacc)


def write_raw(path, lengths=(4, 6, 3), env="Lift", env_info=None, mutate=None):
    """A demo.hdf5 in the layout gather_demonstrations_as_hdf5 writes (numbers, not a real scene)."""
    env_info = {"env_name": env, "robots": ["Panda"], "control_freq": 10} if env_info is None else env_info
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, n in enumerate(lengths, start=1):
            rng = np.random.default_rng(i)
            demo = data.create_group(f"demo_{i}")
            demo.attrs["model_file"] = f"<mujoco model='scene{i % 2}'/>"
            demo.create_dataset("states", data=rng.normal(size=(n, 32)))
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (n, 7)))
        data.attrs["date"] = "3-12-2026"
        data.attrs["time"] = "20:31:49"
        data.attrs["repository_version"] = "1.5.2"
        data.attrs["env"] = env
        data.attrs["env_info"] = json.dumps(env_info)
        if mutate:
            mutate(f)
    return path


def test_states_actions_and_metadata_are_imported_without_replay(tmp_path):
    path = write_raw(tmp_path / "demo.hdf5")
    store = import_robosuite(path, tmp_path / "lift.zarr", progress=False)
    assert store.keys == ["action", "sim_state"] and list(store.episode_lengths()) == [4, 6, 3]
    assert store.fps == 10.0                                  # env_info's control_freq
    source = store.source
    with h5py.File(path, "r") as f:
        for i in range(3):
            demo = f[f"data/demo_{i + 1}"]
            np.testing.assert_array_equal(store.episode(i)["sim_state"], demo["states"][()])
            np.testing.assert_array_equal(store.episode(i)["action"], demo["actions"][()])
            assert source["model_files"][source["demos"][i]["model_file"]] == demo.attrs["model_file"]
        assert source["env"] == "Lift" and source["env_info"] == json.loads(f["data"].attrs["env_info"])
        assert source["data_attrs"] == {k: f["data"].attrs[k] for k in ("date", "time", "repository_version")}
    assert source["format"] == "robosuite" and source["replay"] is None
    assert [d["name"] for d in source["demos"]] == ["demo_1", "demo_2", "demo_3"]
    assert source["model_files"] == ["<mujoco model='scene1'/>", "<mujoco model='scene0'/>"]

    some = import_robosuite(path, tmp_path / "some.zarr", episodes=[3, 1], fps=5, progress=False)
    assert [d["name"] for d in some.source["demos"]] == ["demo_1", "demo_3"] and some.fps == 5.0
    assert list(some.episode_lengths()) == [4, 3]


@pytest.mark.parametrize("env, env_info, message", [
    ("Lift; import os", None, "not an environment robosuite registers"),
    ("Lift", {"env_name": "Lift", "robots": ["Panda", "os.system"]}, "env_info.robots names 'os.system'"),
    ("Lift", {"env_name": "Lift", "robots": "Panda", "controller_configs": {"type": "evil.Module"}},
     "controller type 'evil.Module'"),
    ("Lift", {"env_name": "Lift", "robots": "Panda",
              "controller_configs": {"type": "BASIC", "ik_input_file": "/tmp/x.pkl"}}, "names a file"),
    ("Lift", {"env_name": "Stack", "robots": "Panda"}, "names env_name 'Stack' but 'env' is 'Lift'"),
    ("Lift", {"env_name": "Lift"}, "names no robots"),
])
def test_replay_refuses_what_robosuite_should_not_be_given(tmp_path, env, env_info, message):
    path = write_raw(tmp_path / "demo.hdf5", env=env, env_info=env_info)
    with pytest.raises(StoreError) as err:
        import_robosuite(path, tmp_path / "x.zarr", replay=True, progress=False)
    assert str(err.value).startswith(f"{path}: data") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "x.zarr").exists()


def test_bad_files_and_options_are_one_line_errors(tmp_path):
    no_states = write_raw(tmp_path / "a.hdf5", mutate=lambda f: f["data/demo_2"].pop("states"))
    with pytest.raises(StoreError, match=r"a.hdf5: data/demo_2 lacks 'states'"):
        import_robosuite(no_states, tmp_path / "a.zarr", progress=False)
    def short_states(f):
        del f["data/demo_1/states"]
        f["data/demo_1"].create_dataset("states", data=np.zeros((3, 32)))
    short = write_raw(tmp_path / "b.hdf5", mutate=short_states)
    with pytest.raises(StoreError, match=r"b.hdf5: data/demo_1/states: has shape \(3, 32\), not 4 steps"):
        import_robosuite(short, tmp_path / "b.zarr", progress=False)
    with pytest.raises(StoreError, match="add replay=true"):
        import_robosuite(write_raw(tmp_path / "c.hdf5"), tmp_path / "c.zarr", cameras=["agentview"], progress=False)
    with pytest.raises(StoreError, match="camera names"):
        import_robosuite(write_raw(tmp_path / "d.hdf5"), tmp_path / "d.zarr", replay=True, cameras=["a/b"],
                         progress=False)
    info = write_raw(tmp_path / "e.hdf5", mutate=lambda f: f["data"].attrs.__setitem__("env_info", "[1, 2]"))
    with pytest.raises(StoreError, match="'env_info' must be a JSON object"):
        import_robosuite(info, tmp_path / "e.zarr", progress=False)
    assert not list(tmp_path.glob("*.zarr*"))


def test_scene_xml_may_use_only_robosuite_files_and_bounded_sizes(tmp_path):
    root = str(tmp_path / "robosuite")
    (tmp_path / "robosuite").mkdir()
    check_model_xml(f"<mujoco><asset><mesh file='{root}/a.stl'/></asset><size memory='64M'/></mujoco>", root, "w")
    for xml, message in [
        ("<mujoco><asset><mesh file='/etc/passwd'/></asset></mujoco>", "outside the installed robosuite"),
        (f"<mujoco><asset><mesh file='{root}/../../etc/passwd'/></asset></mujoco>", "outside the installed"),
        ("<mujoco><asset><texture fileright='sky.png'/></asset></mujoco>", "outside the installed"),
        ("<mujoco><include file='other.xml'/></mujoco>", "includes another file"),
        ("<mujoco><size memory='100G'/></mujoco>", "<size memory='100G'>, more than"),
        ("<mujoco><asset><texture builtin='flat' width='100000' height='2'/></asset></mujoco>", "more than 8,192"),
        ("<mujoco><size njmax='lots'/></mujoco>", "is not a size"),
        ("<mujoco", "is not XML"),
    ]:
        with pytest.raises(StoreError, match=message):
            check_model_xml(xml, root, "demo.hdf5: data/demo_1")


# --- a real demo, recorded by robosuite and replayed --------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """``(demo.hdf5, {first state bytes: [observation at each saved state]})`` of two Lift demos."""
    from robosuite.scripts.collect_human_demonstrations import gather_demonstrations_as_hdf5
    from robosuite.wrappers import DataCollectionWrapper

    from cadence.envs.robosuite_tasks import import_robosuite as quiet_robosuite

    suite = quiet_robosuite()
    folder = tmp_path_factory.mktemp("robosuite")
    config = {"env_name": "Lift", "robots": ["Panda"],
              "controller_configs": suite.load_composite_controller_config(controller="BASIC", robot="Panda")}
    env = suite.make(**config, has_renderer=False, has_offscreen_renderer=False, ignore_done=True,
                     use_camera_obs=False, reward_shaping=True, control_freq=20)
    env._check_success = lambda: True          # gather keeps successful demos only
    wrapper = DataCollectionWrapper(env, str(folder / "raw"))
    rng, observed = np.random.default_rng(0), {}
    for _ in range(2):
        wrapper.reset()
        states, obs = [env.sim.get_state().flatten()], [env._get_observations(force_update=True)]
        for _ in range(STEPS):
            wrapper.step(rng.uniform(-1, 1, 7))
            env.sim.forward()                  # the observation at the state the wrapper saves
            states.append(env.sim.get_state().flatten())
            obs.append(env._get_observations(force_update=True))
        observed[states[0].tobytes()] = obs[:-1]     # gather drops the state after the last action
    wrapper.close()
    gather_demonstrations_as_hdf5(str(folder / "raw"), str(folder), json.dumps(config))
    return folder / "demo.hdf5", observed


def test_replay_regenerates_the_observations_seen_while_recording(recorded, tmp_path):
    path, observed = recorded
    store = import_robosuite(path, tmp_path / "lift.zarr", replay=True, progress=False)
    assert store.n_episodes == 2 and list(store.episode_lengths()) == [STEPS, STEPS]
    assert {"robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "cube_pos", "object-state"} <= set(store.keys)
    with h5py.File(path, "r") as f:
        assert sorted(f["data"].keys()) == ["demo_1", "demo_2"] and set(f["data/demo_1"]) == {"states", "actions"}
        for i, entry in enumerate(store.source["demos"]):
            demo, ep = f[f"data/{entry['name']}"], store.episode(i)
            np.testing.assert_array_equal(ep["sim_state"], demo["states"][()])
            np.testing.assert_array_equal(ep["action"], demo["actions"][()])
            assert store.source["model_files"][entry["model_file"]] == demo.attrs["model_file"]
            seen = observed[demo["states"][0].tobytes()]
            compared = [k for k in seen[0] if k not in NOT_FROM_STATE]
            assert set(compared) | set(NOT_FROM_STATE) | {"action", "sim_state"} == set(store.keys)
            for key in compared:
                expected = np.stack([np.asarray(o[key]) for o in seen]).reshape(ep[key].shape)
                np.testing.assert_allclose(ep[key], expected, rtol=0, atol=1e-9, err_msg=key)
    replay = store.source["replay"]
    assert replay["cameras"] == [] and replay["robosuite_version"] == "1.5.2"
    assert store.source["env"] == "Lift" and store.source["env_info"]["robots"] == ["Panda"]


def test_replay_refuses_a_scene_that_points_outside_robosuite(recorded, tmp_path):
    path, _ = recorded
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(path.read_bytes())
    with h5py.File(bad, "a") as f:
        xml = f["data/demo_2"].attrs["model_file"]
        outside = "<asset><texture name='x' file='/etc/hostname'/>"
        f["data/demo_2"].attrs["model_file"] = xml.replace("<asset>", outside, 1)
    with pytest.raises(StoreError, match=r"bad.hdf5: data/demo_2: attribute 'model_file' points <texture file> at "
                                         r"'/etc/hostname'"):
        import_robosuite(bad, tmp_path / "bad.zarr", replay=True, progress=False)
    assert not (tmp_path / "bad.zarr").exists()


def test_replay_renders_camera_images_upright(recorded, tmp_path):
    import mujoco

    from cadence.envs.robosuite_render import CameraRenderer

    path, _ = recorded
    store = import_robosuite(path, tmp_path / "cam.zarr", replay=True, cameras=["agentview"], image_size=[32, 48],
                             progress=False)
    images = store.episode(0)["agentview_image"]
    assert images.shape == (STEPS, 32, 48, 3) and images.dtype == np.uint8
    assert store.source["replay"]["image_size"] == [32, 48]
    # cadence's renderer (right side up) of the same scene and state: the replayed image is
    # much closer to it than to its upside-down copy
    entry = store.source["demos"][0]
    with h5py.File(path, "r") as f:
        state = f[f"data/{entry['name']}/states"][2]
    from robosuite.environments.base import MujocoEnv
    xml = MujocoEnv.edit_model_xml(None, store.source["model_files"][entry["model_file"]])
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:] = state[1:1 + model.nq], state[1 + model.nq:]
    mujoco.mj_forward(model, data)
    renderer = CameraRenderer(model, 32, 48)
    reference = renderer.render(data, "agentview").astype(float)
    renderer.close()
    upright = np.abs(images[2] - reference).mean()
    assert upright < 0.5 * np.abs(images[2, ::-1] - reference).mean(), upright


def test_cadence_import_format_robosuite(tmp_path):
    write_raw(tmp_path / "demo.hdf5")
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=robosuite", "source=demo.hdf5",
                           "out=lift.zarr", "episodes=[2]"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "imported 1 episodes (6 steps" in proc.stdout
    assert EpisodeStore.open(tmp_path / "lift.zarr").source["demos"][0]["name"] == "demo_2"
    bad = subprocess.run([sys.executable, "-m", "cadence.cli", "import", "format=robosuite", "source=demo.hdf5",
                          "out=cam.zarr", "cameras=[agentview]"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "add replay=true" in bad.stderr
