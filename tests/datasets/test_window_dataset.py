"""WindowDataset: keys sliced from stored ones, float images held as uint8, task configs."""
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.window_dataset import WindowDataset, is_image_shape


@pytest.fixture
def store(tmp_path):
    s = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    rng = np.random.default_rng(0)
    for length in (7, 5):
        s.append_episode({
            "state": rng.normal(size=(length, 5)).astype(np.float32),
            "keypoint": rng.normal(size=(length, 9, 2)).astype(np.float32),
            "img": rng.uniform(0, 255, size=(length, 8, 8, 3)).astype(np.float32),
            "action": rng.normal(size=(length, 2)).astype(np.float32)})
    return EpisodeStore.open(tmp_path / "s.zarr")


def test_sliced_key_is_the_slice_of_its_stored_key_and_so_are_its_stats(store):
    data = WindowDataset(store, ["agent_pos", "keypoint"], "action", 2, 4, slices={"agent_pos": ["state", 1, 3]})
    state = store.load(["state"])["state"]
    np.testing.assert_array_equal(data.arrays["agent_pos"].numpy(), state[:, 1:3])
    assert data.obs_shapes == {"agent_pos": (2,), "keypoint": (9, 2)}
    stats = data.stats("agent_pos")
    np.testing.assert_allclose(stats["min"], state[:, 1:3].min(0))
    np.testing.assert_allclose(stats["std"], state[:, 1:3].std(0), rtol=1e-5)
    batch = data.batch(torch.tensor([0, 8]))
    assert batch["agent_pos"].shape == (2, 2, 2) and batch["keypoint"].shape == (2, 2, 9, 2)


@pytest.mark.parametrize("spec, words", [
    (["nope", 0, 2], "nope"), (["state", 3, 9], "outside"), (["state", 0], "[stored_key, start, stop]")])
def test_bad_slices_are_refused_naming_them(store, spec, words):
    with pytest.raises(StoreError, match=re.escape(words)):
        WindowDataset(store, ["agent_pos"], "action", 2, 4, slices={"agent_pos": spec})


def test_float_images_are_held_as_rounded_uint8(store):
    data = WindowDataset(store, ["img"], "action", 2, 4)
    img = store.load(["img"])["img"]
    assert data.arrays["img"].dtype == torch.uint8
    np.testing.assert_array_equal(data.arrays["img"].numpy(), np.rint(img).astype(np.uint8))


def test_for_task_reads_the_task_config(store):
    task = OmegaConf.create({"dataset": str(store.path), "obs_keys": ["pos"], "action_key": "action",
                             "obs_slices": {"pos": ["state", 0, 2]}})
    data = WindowDataset.for_task(task, 2, 4)
    assert data.obs_shapes == {"pos": (2,)} and len(data) == 12


def test_image_shape_rule():
    assert is_image_shape((96, 96, 3)) and not is_image_shape((9, 2)) and not is_image_shape((4, 4, 2))
