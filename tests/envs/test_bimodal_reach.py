"""The bimodal reach task: registration, spaces, expert, the mode-averaging failure, options,
seeding, image observations, input checks and truncation. Real MuJoCo simulation throughout."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import cadence.envs  # noqa: F401  (registers the task)
from cadence.envs import DEFAULT_TASK_ID
from cadence.envs.bimodal_reach import BimodalReachEnv
from cadence.envs.bimodal_reach_expert import BimodalReachExpert


@pytest.fixture
def env():
    env = BimodalReachEnv()
    yield env
    env.close()


def _run(env, act, max_steps=200):
    """Step ``act(obs)`` until the episode ends; returns (steps, final info, any collision)."""
    obs = env._observation()
    collided_ever = False
    for step in range(1, max_steps + 1):
        obs, reward, terminated, truncated, info = env.step(act(obs))
        collided_ever |= info["collided"]
        if terminated or truncated:
            return step, reward, info, collided_ever
    raise AssertionError(f"episode did not end within {max_steps} steps")


def test_registered_and_made_through_gymnasium():
    assert DEFAULT_TASK_ID == "cadence/BimodalReach-v0"
    assert DEFAULT_TASK_ID in gym.registry
    env = gym.make(DEFAULT_TASK_ID, max_steps=7)
    try:
        assert isinstance(env.unwrapped, BimodalReachEnv)
        assert env.unwrapped.max_steps == 7
        obs, info = env.reset(seed=0)
        assert set(info) >= {"is_success", "collided", "mode", "distance"}
        assert info["mode"] == "none" and not info["is_success"] and not info["collided"]
    finally:
        env.close()


def test_spaces_and_dtypes(env):
    space = env.observation_space
    assert isinstance(space, gym.spaces.Dict)
    assert list(space.spaces) == ["state"]  # no image unless image_size is set
    assert space["state"].shape == (6,) and space["state"].dtype == np.float32
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    obs, _ = env.reset(seed=3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (6,)
    assert space.contains(obs)
    obs, *_ = env.step(env.action_space.sample())
    assert obs["state"].dtype == np.float32 and space.contains(obs)


@pytest.mark.parametrize("side", ["left", "right"])
def test_expert_succeeds_on_its_side(env, side):
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        expert = BimodalReachExpert(seed=seed)
        expert.reset(obs["state"][:2], obs["state"][4:6], side)
        steps, reward, info, collided = _run(env, lambda _obs: expert.act())
        assert info["is_success"], (seed, side, info)
        assert reward == 1.0
        assert info["mode"] == side, (seed, info)
        assert not collided
        assert steps < env.max_steps
        assert info["distance"] < 0.1


def test_averaging_the_two_modes_hits_the_obstacle(env):
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        start, goal = obs["state"][:2], obs["state"][4:6]
        left, right = BimodalReachExpert(seed=seed), BimodalReachExpert(seed=seed)
        left.reset(start, goal, "left")
        right.reset(start, goal, "right")
        steps, reward, info, collided = _run(env, lambda _obs: (left.act() + right.act()) / 2)
        assert not info["is_success"], (seed, info)
        assert reward == 0.0
        assert info["collided"] and collided, (seed, info)
        assert steps < env.max_steps  # ended by the collision, not by running out of time


def test_reset_options_fix_start_and_goal(env):
    start, goal = (0.3, -0.8), (-0.4, 0.9)
    for seed in (0, 1):
        obs, info = env.reset(seed=seed, options={"start": start, "goal": goal})
        state = obs["state"]
        np.testing.assert_allclose(state[:2], start, atol=1e-6)
        np.testing.assert_allclose(state[2:4], 0.0, atol=1e-9)
        np.testing.assert_allclose(state[4:6], goal, atol=1e-6)
        assert info["distance"] == pytest.approx(np.hypot(0.3 + 0.4, -0.8 - 0.9))


def test_same_seed_same_initial_observation(env):
    first = env.reset(seed=42)[0]["state"].copy()
    env.reset(seed=7)
    again = env.reset(seed=42)[0]["state"]
    np.testing.assert_array_equal(first, again)
    other = BimodalReachEnv()
    try:
        np.testing.assert_array_equal(other.reset(seed=42)[0]["state"], first)
    finally:
        other.close()
    assert not np.array_equal(env.reset(seed=43)[0]["state"], first)


def test_image_observation():
    env = BimodalReachEnv(image_size=32)
    try:
        assert env.observation_space["image"].shape == (32, 32, 3)
        obs, _ = env.reset(seed=0, options={"start": (0.0, -0.6), "goal": (0.0, 1.0)})
        image = obs["image"]
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        assert env.observation_space.contains(obs)
        assert image.std() > 5  # a scene, not a blank frame
        for _ in range(15):
            obs, _, terminated, truncated, _ = env.step(np.array([-0.8, -0.6], np.float32))
            assert not (terminated or truncated)
        assert obs["state"][0] < -0.5  # the agent really moved
        moved = obs["image"]
        assert moved.dtype == np.uint8 and moved.shape == (32, 32, 3)
        diff = np.abs(moved.astype(int) - image.astype(int)).sum(axis=-1)
        changed = np.argwhere(diff > 100)  # the agent is about one pixel wide at 32 px
        assert len(changed) >= 2
        # changes both where the agent was (centre) and where it went (left of it)
        assert changed[:, 1].max() - changed[:, 1].min() >= 4
    finally:
        env.close()


def test_non_finite_action_raises(env):
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ValueError):
        env.step(np.array([0.0, np.inf], np.float32))


def test_truncates_at_max_steps_when_holding_still():
    env = BimodalReachEnv(max_steps=15)
    try:
        obs, _ = env.reset(seed=5)
        hold = obs["state"][:2].copy()
        for step in range(1, 16):
            obs, reward, terminated, truncated, info = env.step(hold)
            assert not terminated and reward == 0.0
            np.testing.assert_allclose(obs["state"][:2], hold, atol=1e-4)
            assert truncated == (step == 15), step
        assert not info["is_success"] and not info["collided"] and info["mode"] == "none"
    finally:
        env.close()


def test_hold_action_is_the_current_position_and_stops_the_agent(env):
    env.reset(seed=0, options={"start": (0.5, -0.8), "goal": (0.0, 1.0)})
    for _ in range(3):  # get moving
        env.step(np.array([1.2, -0.8], np.float32))
    hold = env.hold_action()
    assert hold.dtype == np.float32 and hold.shape == env.action_space.shape
    np.testing.assert_allclose(hold, env.position, atol=1e-6)
    assert env.data.qvel[0] > 0.1  # still moving when the hold starts
    for _ in range(15):
        obs, *_ = env.step(hold)
    np.testing.assert_allclose(obs["state"][:2], hold, atol=2e-3)   # servoed back to the held pose
    np.testing.assert_allclose(obs["state"][2:4], 0.0, atol=1e-2)
    hold[0] = 99.0  # a copy, not a view of the simulation state
    assert env.position[0] < 1.5


@pytest.mark.parametrize("allowed", ["left", "right"])
def test_a_one_sided_variant_counts_only_its_side(allowed):
    env = BimodalReachEnv(side=allowed)
    try:
        for side in ("left", "right"):
            obs, _ = env.reset(seed=3)
            expert = BimodalReachExpert(seed=3)
            expert.reset(obs["state"][:2], obs["state"][4:6], side)
            _, reward, info, _ = _run(env, lambda _obs: expert.act())
            assert info["mode"] == side and info["distance"] < 0.1
            assert info["is_success"] == (side == allowed) and reward == float(side == allowed)
    finally:
        env.close()
    with pytest.raises(ValueError, match="side"):
        BimodalReachEnv(side="up")
