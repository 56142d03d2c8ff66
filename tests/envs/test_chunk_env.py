import numpy as np
import pytest

from cadence.envs.bimodal_reach import BimodalReachEnv
from cadence.envs.bimodal_reach_expert import BimodalReachExpert
from cadence.envs.chunk_env import ChunkVectorEnv


def test_histories_are_padded_then_roll_and_steps_are_counted():
    venv = ChunkVectorEnv(BimodalReachEnv, n=3, obs_horizon=2, exec_horizon=4, obs_keys=["state"], seed=7)
    obs = venv.reset()
    assert obs["state"].shape == (3, 2, 6) and np.array_equal(obs["state"][:, 0], obs["state"][:, 1])
    ref = BimodalReachEnv()
    first, _ = ref.reset(seed=8)                   # env 1 got the second seed
    assert np.allclose(obs["state"][1, 1], first["state"])
    hold = np.repeat(obs["state"][:, -1, None, :2], 4, axis=1)     # stay in place
    step = venv.step(hold)
    for _ in range(4):
        last, *_ = ref.step(hold[1, 0])
    assert step.env_steps == 12 and not step.terminated.any() and not step.truncated.any()
    assert np.allclose(step.obs["state"][1, 1], last["state"], atol=1e-6)
    assert np.all(step.reward == 0) and step.finished == []
    with pytest.raises(ValueError, match="exec_horizon=4"):
        venv.step(hold[:, :3])
    venv.close()


def test_success_pays_one_ends_the_episode_and_resets_with_the_next_seed():
    venv = ChunkVectorEnv(BimodalReachEnv, n=1, obs_horizon=2, exec_horizon=1, obs_keys=["state"], seed=0)
    venv.reset()
    env = venv.envs[0]
    expert = BimodalReachExpert(seed=0)
    expert.reset(env.position, env.goal, "left")
    # one action per chunk, so the chunk that succeeds is the episode's last step
    steps = []
    while not steps or not (steps[-1].terminated.any() or steps[-1].truncated.any()):
        steps.append(venv.step(np.array([[[*expert.act()]]])))
    last = steps[-1]
    assert last.reward[0] == 1.0 and last.terminated[0] and not last.truncated[0] and last.finished == [True]
    assert all(s.reward[0] == 0.0 for s in steps[:-1])
    assert venv.next_seed == 2                      # the finished env was reset with seed 1
    fresh, _ = BimodalReachEnv().reset(seed=1)
    assert np.allclose(last.obs["state"][0, 0], fresh["state"]) and np.allclose(last.obs["state"][0, 1], fresh["state"])
    assert not np.allclose(last.final_obs["state"][0, 1], fresh["state"])   # where the episode ended


def test_time_limit_is_a_truncation_and_collision_a_termination_without_reward():
    venv = ChunkVectorEnv(lambda: BimodalReachEnv(max_steps=5), n=2, obs_horizon=1, exec_horizon=4,
                          obs_keys=["state"], seed=3)
    obs = venv.reset()
    hold = np.repeat(obs["state"][:, -1, None, :2], 4, axis=1)
    hold[1] = [[0.0, 0.0]] * 4                     # env 1 drives into the obstacle at the origin
    first = venv.step(hold)
    second = venv.step(np.repeat(first.obs["state"][:, -1, None, :2], 4, axis=1))
    assert first.terminated[1] and first.reward[1] == 0.0
    assert not first.truncated[0] and second.truncated[0] and not second.terminated[0]
    assert second.env_steps == 1 + 4 and first.env_steps < 8     # env 0 cut after its 5th step; env 1 stopped at the collision
    assert first.finished == [False] and second.finished.count(False) >= 1


@pytest.mark.parametrize("env_id,keys", [("cadence/Lift-v0", ["robot0_eef_pos", "object"]),
                                         ("cadence/Can-v0", ["robot0_eef_pos", "robot0_gripper_qpos", "object"])])
def test_robosuite_tasks_run_as_chunk_environments(env_id, keys):
    import gymnasium as gym

    import cadence.envs  # noqa: F401  (registers the tasks)

    venv = ChunkVectorEnv(lambda: gym.make(env_id, max_steps=6), n=2, obs_horizon=2, exec_horizon=4, obs_keys=keys,
                          seed=0)
    try:
        obs = venv.reset()
        assert all(obs[k].shape[:2] == (2, 2) for k in keys)
        assert not np.allclose(obs["object"][0], obs["object"][1])          # seeds 0 and 1: other placements
        still = np.zeros((2, 4, 7), np.float32)
        first, second = venv.step(still), venv.step(still)
        assert first.env_steps == 8 and not (first.terminated | first.truncated).any()
        assert second.truncated.all() and second.env_steps == 4 and np.all(second.reward == 0)   # cut at 6 steps
        assert venv.next_seed == 4 and second.finished == [False, False]
    finally:
        venv.close()
