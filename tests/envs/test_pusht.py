"""PushT through gym-pusht with the Diffusion Policy store's observation keys."""
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import zarr

import cadence.envs  # noqa: F401
from cadence.envs.pusht import SUCCESS_COVERAGE, keypoints_from_state

STORE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "pusht_cchi_v7_replay.zarr"
GOAL = np.array([256.0, 256.0, np.pi / 4])
needs_store = pytest.mark.skipif(not STORE.exists(), reason=f"{STORE} not present")


@pytest.fixture
def env():
    e = gym.make("cadence/PushT-v0", image=True)
    e.reset(seed=0)
    yield e.unwrapped
    e.close()


def test_observation_keys_shapes_and_time_limit():
    e = gym.make("cadence/PushT-v0")
    obs, info = e.reset(seed=3)
    assert set(obs) == {"state", "agent_pos", "keypoint"}
    assert obs["keypoint"].shape == (9, 2) and obs["state"].dtype == np.float32
    np.testing.assert_array_equal(obs["agent_pos"], obs["state"][:2])
    assert 0.0 <= info["coverage"] <= 1.0
    assert e.spec.max_episode_steps == 300


def test_reset_is_reproducible_per_seed():
    a, _ = gym.make("cadence/PushT-v0").reset(seed=100_000)
    b, _ = gym.make("cadence/PushT-v0").reset(seed=100_000)
    c, _ = gym.make("cadence/PushT-v0").reset(seed=100_001)
    np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.array_equal(a["state"], c["state"])


def test_block_on_the_goal_covers_it_and_succeeds(env):
    env.set_state([100.0, 100.0, *GOAL])
    assert env.coverage() == pytest.approx(1.0, abs=1e-6)
    _, reward, terminated, _, info = env.step(np.array([100.0, 100.0]))
    assert reward == pytest.approx(1.0) and terminated and info["is_success"]


@pytest.mark.parametrize("d", [5.0, 10.0, 20.0])
def test_coverage_of_a_block_slid_along_its_stem(env, d):
    # The T is a 120x30 bar over a 30x90 stem (area 6300). Sliding it by d < 30 along the stem
    # keeps 120*(30-d) of the bar, 30*(90-d) of the stem, and moves 30*d of bar onto the stem:
    # coverage = 1 - 120 d / 6300.
    theta = GOAL[2]
    shift = d * np.array([-np.sin(theta), np.cos(theta)])
    env.set_state([100.0, 100.0, *(GOAL[:2] + shift), theta])
    assert env.coverage() == pytest.approx(1 - 120 * d / 6300, abs=1e-6)
    _, reward, terminated, _, _ = env.step(np.array([100.0, 100.0]))
    assert reward == pytest.approx(min((1 - 120 * d / 6300) / SUCCESS_COVERAGE, 1.0), abs=1e-6)
    assert not terminated


def test_block_away_from_the_goal_covers_nothing(env):
    env.set_state([400.0, 400.0, 100.0, 420.0, 0.0])
    assert env.coverage() == 0.0


@needs_store
def test_keypoints_and_images_match_the_diffusion_policy_store(env):
    root = zarr.open(str(STORE), mode="r")
    idx = np.arange(0, root["data/state"].shape[0], 997)
    state = root["data/state"][:][idx]
    error = np.abs(keypoints_from_state(state) - root["data/keypoint"][:][idx]).max(axis=(1, 2))
    assert np.percentile(error, 99) < 0.1
    for i in idx[:5]:
        obs = env.set_state(root["data/state"][i])
        np.testing.assert_allclose(obs["state"], root["data/state"][i], atol=1e-3)
        difference = np.abs(obs["img"].astype(float) - root["data/img"][i])
        assert difference.mean() < 1.0 and (difference > 40).mean() < 0.01
