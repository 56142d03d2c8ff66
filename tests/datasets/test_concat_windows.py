"""ConcatWindows: batches come back in the order asked for, statistics of the union, shape checks."""
import numpy as np
import pytest
import torch

from cadence.datasets.concat_windows import ConcatWindows
from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.window_dataset import WindowDataset


def _store(path, lengths, seed, dim=3, shift=0.0):
    store = EpisodeStore.create(path, fps=10)
    rng = np.random.default_rng(seed)
    for length in lengths:
        store.append_episode({"state": (rng.normal(size=(length, dim)) + shift).astype(np.float32),
                              "action": rng.normal(size=(length, 2)).astype(np.float32)})
    return EpisodeStore.open(path)


@pytest.fixture
def parts(tmp_path):
    a = WindowDataset(_store(tmp_path / "a.zarr", (6, 4), 0), ["state", "task_id"], "action", 2, 4,
                      constants={"task_id": [1.0, 0.0]})
    b = WindowDataset(_store(tmp_path / "b.zarr", (5,), 1, shift=3.0), ["state", "task_id"], "action", 2, 4,
                      constants={"task_id": [0.0, 1.0]})
    return a, b


def test_batches_keep_the_requested_order_and_carry_each_part_s_task_id(parts):
    a, b = parts
    data = ConcatWindows(parts, ["a", "b"])
    assert len(data) == len(a) + len(b) and data.n_episodes == 3
    samples = torch.tensor([len(a) + 2, 0, len(a), 3, len(a) + 4, 1])
    batch = data.batch(samples)
    for row, i in enumerate(samples.tolist()):
        part, j = (a, i) if i < len(a) else (b, i - len(a))
        one = part.batch(torch.tensor([j]))
        for key in one:
            assert torch.equal(batch[key][row], one[key][0]), (key, i)
    assert batch["task_id"].shape == (6, 2, 2)
    assert batch["task_id"][:, 0].tolist() == [[0, 1], [1, 0], [0, 1], [1, 0], [0, 1], [1, 0]]


def test_statistics_are_those_of_all_steps_together(parts):
    data = ConcatWindows(parts, ["a", "b"])
    steps = np.concatenate([p.arrays["state"].numpy() for p in parts])
    stats = data.stats("state")
    np.testing.assert_allclose(stats["min"], steps.min(0), atol=1e-6)
    np.testing.assert_allclose(stats["max"], steps.max(0), atol=1e-6)
    np.testing.assert_allclose(stats["mean"], steps.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["std"], steps.std(0), atol=1e-4)
    task = data.stats("task_id")
    assert task["min"].tolist() == [0, 0] and task["max"].tolist() == [1, 1]
    np.testing.assert_allclose(task["mean"], [10 / 15, 5 / 15])


def test_members_with_other_shapes_are_named(tmp_path, parts):
    other = WindowDataset(_store(tmp_path / "c.zarr", (5,), 2, dim=4), ["state", "task_id"], "action", 2, 4,
                          constants={"task_id": [0.0, 1.0]})
    with pytest.raises(StoreError, match="task 'c'.*must match"):
        ConcatWindows([parts[0], other], ["a", "c"])
