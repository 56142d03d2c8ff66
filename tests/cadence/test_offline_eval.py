"""Offline validation on held-out episodes: errors in task units, min-of-K, chunk jumps, the plot."""
import json

import numpy as np
import pytest
import torch

from cadence.policies.action_chunk import ActionChunk
from cadence.datasets.episode_store import EpisodeStore
from cadence.datasets.window_dataset import WindowDataset
from cadence.offline_eval import offline_validate, write_offline

LENGTHS = [11, 7, 9, 5]
TO, TP, TA = 2, 6, 3


def demo_action(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return np.stack([np.sin(rows / 3), rows / 100], -1)


@pytest.fixture()
def data(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=15)
    row = 0
    for n in LENGTHS:
        rows = np.arange(row, row + n)
        store.append_episode({"observation.row": rows[:, None].astype(np.float32),
                              "action": demo_action(rows).astype(np.float32)})
        row += n
    return WindowDataset(EpisodeStore.open(store.path), ["observation.row"], "action", TO, TP)


class ReplayingPolicy:
    """Knows the demonstration: returns its chunk for the observed step, plus ``offset`` on every
    row but each K-th (so exactly one of the K samples per replan is the demonstration)."""

    obs_horizon = TO

    def __init__(self, offset=(0.0, 0.0), exact_every=None):
        self.offset, self.exact_every = np.asarray(offset), exact_every
        self.calls = 0

    def eval(self):
        return self

    def predict_chunk(self, obs, generator=None):
        self.calls += 1
        now = obs["observation.row"][:, -1, 0].numpy().astype(np.int64)
        rows = now[:, None] - (TO - 1) + np.arange(TP)
        chunk = demo_action(rows) + self.offset
        if self.exact_every:
            exact = np.arange(len(now)) % self.exact_every == self.exact_every - 1
            chunk[exact] -= self.offset
        return ActionChunk(torch.from_numpy(chunk).float(), start=TO - 1)


def test_a_policy_that_reproduces_the_demonstrations_scores_zero(data, tmp_path):
    summary = offline_validate(ReplayingPolicy(), data, [0, 2, 3], TA, samples=2, seed=0, device="cpu",
                               out_dir=tmp_path, plot_episodes=2)
    assert summary["l1"] == pytest.approx(0, abs=1e-6) and summary["min_of_k_l1"] == pytest.approx(0, abs=1e-6)
    assert summary["steps"] == LENGTHS[0] + LENGTHS[2] + LENGTHS[3]
    # the chunk jump equals the demonstration's own change at the seams
    assert summary["chunk_jump"] == pytest.approx(summary["demo_step_change"], abs=1e-6)
    assert (tmp_path / "offline_actions.png").stat().st_size > 1000


def test_errors_are_per_dimension_in_task_units(data):
    summary = offline_validate(ReplayingPolicy(offset=(0.25, -0.5)), data, [1, 2], TA, samples=1, seed=0,
                               device="cpu")
    assert summary["l1_per_dim"] == pytest.approx([0.25, 0.5], abs=1e-6)
    assert summary["mse_per_dim"] == pytest.approx([0.0625, 0.25], abs=1e-6)
    assert summary["l1"] == pytest.approx(0.375, abs=1e-6) and summary["min_of_k_l1"] == pytest.approx(0.375, abs=1e-6)


def test_min_of_k_does_not_punish_the_other_mode(data):
    """Sample 0 misses by 0.3; one of the four samples is exact: min-of-4 is 0, the L1 of sample 0 is not."""
    summary = offline_validate(ReplayingPolicy(offset=(0.3, 0.3), exact_every=4), data, [0, 1, 2, 3], TA,
                               samples=4, seed=0, device="cpu")
    assert summary["l1"] == pytest.approx(0.3, abs=1e-6)
    assert summary["min_of_k_l1"] == pytest.approx(0.0, abs=1e-6)


def test_min_of_one_is_the_l1_itself(data):
    """Episode ends cut the last replan short: both numbers weight every step alike."""
    class Uneven(ReplayingPolicy):
        def predict_chunk(self, obs, generator=None):
            chunk = super().predict_chunk(obs, generator)
            now = obs["observation.row"][:, -1, 0]
            return type(chunk)(chunk.actions + (now % 5)[:, None, None] / 10, chunk.start)

    summary = offline_validate(Uneven(), data, [0, 1, 2, 3], TA, samples=1, seed=0, device="cpu")
    assert summary["l1"] > 0.05 and summary["min_of_k_l1"] == pytest.approx(summary["l1"], rel=1e-9)


def test_every_step_of_every_episode_is_replanned_once_every_exec_horizon(data):
    policy = ReplayingPolicy()
    offline_validate(policy, data, [0, 1], TA, samples=3, seed=0, device="cpu")
    assert policy.calls == int(np.ceil(max(LENGTHS[0], LENGTHS[1]) / TA))


def test_groups_of_episodes_give_the_same_numbers_as_one_batch(data):
    policy = ReplayingPolicy(offset=(0.3, 0.1), exact_every=3)
    whole = offline_validate(policy, data, [0, 1, 2, 3], TA, samples=3, seed=0, device="cpu")
    calls = policy.calls
    grouped = offline_validate(policy, data, [0, 1, 2, 3], TA, samples=3, seed=0, device="cpu", batch_rows=4)
    assert policy.calls - calls > calls                      # one episode (3 rows) per group: more calls
    assert grouped.keys() == whole.keys()
    for key, value in whole.items():
        assert grouped[key] == (value if key == "episodes" else pytest.approx(value)), key


def test_summary_goes_into_eval_json_beside_rollouts(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"success_rate": 0.5}))
    write_offline({"l1": 0.1}, tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text()) == {"success_rate": 0.5, "offline": {"l1": 0.1}}


def test_no_held_out_episode_is_refused(data):
    with pytest.raises(ValueError, match="val_episodes"):
        offline_validate(ReplayingPolicy(), data, [], TA, samples=1, seed=0, device="cpu")
