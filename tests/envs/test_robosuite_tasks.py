"""The robosuite tasks as gymnasium environments: registration without importing robosuite,
robomimic's observation keys, shapes and layout, the action space, seeding, the success flag,
truncation, camera images (right side up) and render(). Real robosuite simulation throughout."""
from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import cadence.envs  # noqa: F401  (registers the tasks)
from cadence.envs.robosuite_tasks import TASKS, CanEnv, LiftEnv, SquareEnv


ENV_IDS = {"lift": "cadence/Lift-v0", "can": "cadence/Can-v0", "square": "cadence/Square-v0"}
CLASSES = {"lift": LiftEnv, "can": CanEnv, "square": SquareEnv}
OBJECT_DIMS = {"lift": 10, "can": 14, "square": 14}          # robomimic's "object" sizes
STATE_DIMS = {"lift": 32, "can": 71, "square": 45}           # robomimic's "states" sizes


@pytest.fixture(scope="module")
def lift():
    env = gym.make("cadence/Lift-v0")
    yield env
    env.close()


def test_importing_cadence_envs_does_not_import_robosuite():
    code = "import sys, cadence.envs; assert 'robosuite' not in sys.modules, 'robosuite imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


@pytest.mark.parametrize("task", ["lift", "can", "square"])
def test_spaces_keys_shapes_and_dtypes(task):
    env = gym.make(ENV_IDS[task])
    try:
        assert isinstance(env.unwrapped, CLASSES[task])
        assert env.unwrapped.robosuite_env.__class__.__name__ == TASKS[task].robosuite_name
        assert env.action_space.shape == (7,) and env.action_space.dtype == np.float32
        assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
        obs, info = env.reset(seed=0)
        assert set(obs) == {"robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"}
        shapes = {k: v.shape for k, v in obs.items()}
        assert shapes == {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,),
                          "object": (OBJECT_DIMS[task],)}
        assert all(v.dtype == np.float32 for v in obs.values())
        assert env.observation_space.contains(obs)
        assert info == {"is_success": False}
        assert env.unwrapped.get_sim_state().shape == (STATE_DIMS[task],)
        obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert env.observation_space.contains(obs)
        assert info["is_success"] is False and reward == 0.0 and not terminated and not truncated
    finally:
        env.close()


def test_object_layout_is_robomimics(lift):
    """robomimic (robosuite <= 1.4): object pos, quat (xyzw), then eef - cube for Lift."""
    obs, _ = lift.reset(seed=1)
    env = lift.unwrapped
    raw = env.raw_observation
    cube = env.robosuite_env.sim.data.body_xpos[env.robosuite_env.cube_body_id]
    np.testing.assert_allclose(obs["object"][:3], cube, atol=1e-6)
    np.testing.assert_allclose(obs["object"][3:7], raw["cube_quat"], atol=1e-6)
    np.testing.assert_allclose(obs["object"][7:], obs["robot0_eef_pos"] - obs["object"][:3], atol=1e-5)
    np.testing.assert_allclose(obs["robot0_eef_pos"], raw["robot0_eef_pos"], atol=1e-6)
    assert abs(np.linalg.norm(obs["robot0_eef_quat"]) - 1.0) < 1e-5


def test_can_object_is_world_pose_then_pose_in_gripper_frame():
    from robosuite.utils import transform_utils as T

    env = gym.make("cadence/Can-v0")
    try:
        env.reset(seed=0)
        for _ in range(4):
            obs, *_ = env.step(np.array([1.0, 0.5, -0.5, 0.0, 0.0, 0.5, 0.0], np.float32))
        raw = env.unwrapped.raw_observation
        np.testing.assert_allclose(obs["object"][:7], np.concatenate([raw["Can_pos"], raw["Can_quat"]]), atol=1e-6)
        gripper = T.pose2mat((obs["robot0_eef_pos"], obs["robot0_eef_quat"]))
        can = T.pose2mat((obs["object"][:3], obs["object"][3:7]))
        rel_pos, rel_quat = T.mat2pose(T.pose_in_A_to_pose_in_B(can, T.pose_inv(gripper)))
        np.testing.assert_allclose(obs["object"][7:10], rel_pos, atol=1e-5)
        np.testing.assert_allclose(np.abs(obs["object"][10:]), np.abs(rel_quat), atol=1e-5)
    finally:
        env.close()


def test_observations_replay_from_saved_states():
    """As robomimic extracts observations: set a saved state, read the observation."""
    actions = np.random.default_rng(1).uniform(-1, 1, (8, 7)).astype(np.float32)
    env = gym.make("cadence/Square-v0")
    replay = gym.make("cadence/Square-v0")
    try:
        obs, _ = env.reset(seed=3)
        replay.reset(seed=0)
        for action in actions:
            expected = replay.unwrapped.set_sim_state(env.unwrapped.get_sim_state())
            for key in obs:
                np.testing.assert_allclose(expected[key], obs[key], atol=1e-6, err_msg=key)
            obs, *_ = env.step(action)
    finally:
        env.close()
        replay.close()


def test_a_restored_snapshot_continues_as_the_original():
    """The oracle verifier's lookahead: MuJoCo's whole integration state plus the grippers'
    integrated commands and the controllers told to re-read the pose. Not bit for bit (robosuite
    recomputes its controller's kinematics), but within 1e-4 after a step and 1e-2 after ten."""
    actions = np.random.default_rng(2).uniform(-1, 1, (15, 7)).astype(np.float32)
    env, copy = gym.make("cadence/Square-v0"), gym.make("cadence/Square-v0")
    try:
        env.reset(seed=3)
        copy.reset(seed=0)
        for action in actions[:5]:
            env.step(action)
        copy.unwrapped.restore(env.unwrapped.snapshot())
        for t, action in enumerate(actions[5:]):
            obs, copied = env.step(action)[0], copy.unwrapped.step(action)[0]
            error = max(float(np.abs(obs[k] - copied[k]).max()) for k in obs)
            assert error < (1e-4 if t == 0 else 1e-2), (t, error)
        assert 0.0 <= env.unwrapped.progress() <= 1.0
    finally:
        env.close()
        copy.close()


def test_same_seed_same_episode_other_seed_other_placement(lift):
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 7)).astype(np.float32)

    def episode(env, seed):
        obs, _ = env.reset(seed=seed)
        out = [obs["object"], env.unwrapped.get_sim_state()]
        for a in actions:
            obs, *_ = env.step(a)
            out.append(obs["object"])
        return out

    first = episode(lift, 7)
    episode(lift, 3)                          # something else in between
    again = episode(lift, 7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = gym.make("cadence/Lift-v0")       # a fresh instance: same model, same episode
    try:
        for a, b in zip(first, episode(other, 7)):
            np.testing.assert_array_equal(a, b)
    finally:
        other.close()
    placements = {tuple(np.round(lift.reset(seed=s)[0]["object"][:2], 6)) for s in range(4)}
    assert len(placements) == 4


def test_unseeded_resets_differ(lift):
    lift.reset(seed=0)
    a = lift.reset()[0]["object"]
    b = lift.reset()[0]["object"]
    assert not np.array_equal(a, b)


def test_success_is_reported_and_terminates(lift):
    """Put the cube 10 cm up in the saved state: success, and the step terminates."""
    lift.reset(seed=0)
    env = lift.unwrapped
    rs = env.robosuite_env
    state = env.get_sim_state()
    qpos_adr = rs.sim.model.get_joint_qpos_addr(rs.cube.joints[0])[0]
    state[1 + qpos_adr + 2] += 0.10          # (time, qpos..., qvel...): the cube's z
    env.set_sim_state(state)
    _, reward, terminated, truncated, info = lift.step(np.zeros(7, np.float32))
    assert info["is_success"] is True and terminated and not truncated and reward == 1.0


def test_truncates_after_max_steps():
    env = gym.make("cadence/Lift-v0", max_steps=3)
    try:
        env.reset(seed=0)
        ends = [env.step(np.zeros(7, np.float32))[3] for _ in range(3)]
        assert ends == [False, False, True]
    finally:
        env.close()


def test_rejects_non_finite_actions_and_unknown_cameras(lift):
    lift.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        lift.step(np.full(7, np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown cameras"):
        gym.make("cadence/Lift-v0", cameras=["nope"])


def test_cameras_are_uint8_and_right_side_up():
    env = gym.make("cadence/Lift-v0", cameras=["agentview", "robot0_eye_in_hand"], image_size=64)
    try:
        obs, _ = env.reset(seed=0)
        for key in ("agentview_image", "robot0_eye_in_hand_image"):
            assert obs[key].shape == (64, 64, 3) and obs[key].dtype == np.uint8
            assert obs[key].std() > 5                          # not blank
        assert env.observation_space.contains(obs)
        # robosuite's own renderer returns the image upside down (OpenGL rows)
        from robosuite.utils.binding_utils import MjRenderContextOffscreen

        sim = env.unwrapped.robosuite_env.sim
        MjRenderContextOffscreen(sim, device_id=-1)
        raw = sim.render(camera_name="agentview", width=64, height=64)
        ours = obs["agentview_image"].astype(float)
        upright = np.abs(ours - raw[::-1]).mean()
        upside_down = np.abs(ours - raw).mean()
        assert upright < 10 and upside_down > 3 * upright, (upright, upside_down)
        # agentview looks at the robot over the table: the white table fills the lower half
        assert ours[40:].mean() > ours[:10].mean() + 20
    finally:
        env.close()


def test_render_rgb_array():
    env = gym.make("cadence/Square-v0", render_mode="rgb_array", render_size=96)
    try:
        env.reset(seed=0)
        frame = env.render()
        assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8 and frame.std() > 5
    finally:
        env.close()
    plain = gym.make("cadence/Square-v0")
    try:
        plain.reset(seed=0)
        assert plain.render() is None
    finally:
        plain.close()
