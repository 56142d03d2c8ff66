"""Tests for cadence.datasets.normalizer (Normalizer, affine_from_stats).

Statistics are computed here with numpy; the expected normalized values come from the
definitions (limits: min -> -1, max -> +1; gaussian: zero mean, unit std).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cadence.datasets.normalizer import Normalizer, affine_from_stats


def numpy_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    action = rng.normal(loc=[3.0, -2.0, 0.5], scale=[0.5, 4.0, 0.01], size=(500, 3)).astype(np.float32)
    state = rng.uniform(low=[-5.0, 0.0, 10.0, -1.0], high=[5.0, 1.0, 12.0, 1.0], size=(500, 4)).astype(np.float32)
    image = rng.uniform(0.0, 1.0, size=(50, 4, 4, 3)).astype(np.float32)
    return {"action": action, "state": state, "image": image}


def make(data, modes):
    return Normalizer.from_stats({k: numpy_stats(v) for k, v in data.items()}, modes)


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_round_trip(data, mode):
    norm = make(data, {k: mode for k in data})
    for key, x in data.items():
        x = torch.from_numpy(x)
        y = norm.normalize(key, x)
        assert y.shape == x.shape
        assert not torch.allclose(y, x)                 # it did transform
        back = norm.unnormalize(key, y)
        assert torch.max(torch.abs(back - x)).item() < 1e-5


def test_limits_maps_min_to_minus_one_and_max_to_plus_one(data):
    norm = make(data, {"action": "limits", "state": "limits", "image": "limits"})
    for key, x in data.items():
        y = norm.normalize(key, torch.from_numpy(x)).numpy()
        assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
        np.testing.assert_allclose(y.min(0), -1.0, atol=1e-5)     # each dimension reaches -1 ...
        np.testing.assert_allclose(y.max(0), 1.0, atol=1e-5)      # ... and +1
        # and the sample at each dimension's argmin/argmax is the one mapped there
        flat_x, flat_y = x.reshape(len(x), -1), y.reshape(len(y), -1)
        cols = np.arange(flat_x.shape[1])
        np.testing.assert_allclose(flat_y[flat_x.argmin(0), cols], -1.0, atol=1e-5)
        np.testing.assert_allclose(flat_y[flat_x.argmax(0), cols], 1.0, atol=1e-5)
    # the midpoint between min and max goes to 0
    x = data["state"]
    mid = torch.from_numpy(((x.min(0).astype(np.float64) + x.max(0)) / 2).astype(np.float32))
    np.testing.assert_allclose(norm.normalize("state", mid).numpy(), 0.0, atol=1e-5)


def test_gaussian_gives_zero_mean_unit_std(data):
    norm = make(data, {"action": "gaussian", "state": "gaussian", "image": "gaussian"})
    for key, x in data.items():
        y = norm.normalize(key, torch.from_numpy(x)).numpy().astype(np.float64)
        np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)


def test_modes_are_per_key(data):
    norm = make(data, {"action": "limits", "state": "gaussian"})
    assert "action" in norm and "state" in norm and "image" not in norm
    a = norm.normalize("action", torch.from_numpy(data["action"])).numpy()
    s = norm.normalize("state", torch.from_numpy(data["state"])).numpy().astype(np.float64)
    np.testing.assert_allclose(a.max(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(s.std(0), 1.0, atol=1e-4)


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
@pytest.mark.parametrize("spread", [0.0, 1e-7])          # exactly constant, and nearly so
def test_constant_dimension_does_not_blow_up(mode, spread):
    rng = np.random.default_rng(1)
    x = np.stack([
        rng.normal(size=200),
        np.full(200, 7.25) + spread * rng.normal(size=200),   # (nearly) constant dimension
        rng.uniform(-3, 3, size=200),
    ], axis=1).astype(np.float32)
    norm = Normalizer.from_stats({"state": numpy_stats(x)}, {"state": mode})
    y = norm.normalize("state", torch.from_numpy(x))
    assert torch.isfinite(y).all()
    # the flat dimension is centred near 0, not stretched (for limits: stays inside [-1, 1])
    assert torch.max(torch.abs(y[:, 1])).item() < 1e-3
    back = norm.unnormalize("state", y)
    assert torch.isfinite(back).all()
    assert torch.max(torch.abs(back - torch.from_numpy(x))).item() < 1e-5
    # the other dimensions are still normalized as usual
    if mode == "limits":
        np.testing.assert_allclose(y[:, [0, 2]].min(0).values.numpy(), -1.0, atol=1e-5)
        np.testing.assert_allclose(y[:, [0, 2]].max(0).values.numpy(), 1.0, atol=1e-5)
    else:
        np.testing.assert_allclose(y[:, [0, 2]].double().std(0, unbiased=False).numpy(), 1.0, atol=1e-4)


def _outputs(norm, data, modes):
    out = {}
    for key in modes:
        x = torch.from_numpy(data[key])
        out[key] = (norm.normalize(key, x), norm.unnormalize(key, x))
    return out


def test_tensors_round_trip_in_memory_and_through_safetensors(data, tmp_path):
    modes = {"action": "limits", "state": "gaussian", "image": "limits"}
    norm = make(data, modes)
    expected = _outputs(norm, data, modes)

    tensors = norm.tensors()
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    assert len(tensors) == 2 * len(modes)              # a scale and an offset per key
    restored = Normalizer.from_tensors(tensors, modes)
    got = _outputs(restored, data, modes)
    for key in modes:
        assert torch.equal(got[key][0], expected[key][0])
        assert torch.equal(got[key][1], expected[key][1])
    assert restored.modes == modes

    path = tmp_path / "normalizer.safetensors"
    save_file(tensors, str(path))
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    from_disk = Normalizer.from_tensors(loaded, modes)
    got = _outputs(from_disk, data, modes)
    for key in modes:
        assert torch.equal(got[key][0], expected[key][0])
        assert torch.equal(got[key][1], expected[key][1])

    # the parameters are buffers: they are part of the state dict and load into a fresh copy
    assert set(norm.state_dict()) == set(tensors)


def test_from_tensors_missing_tensor_is_a_key_error(data):
    modes = {"action": "limits", "state": "gaussian"}
    tensors = make(data, modes).tensors()
    tensors.pop("state__offset")
    with pytest.raises(KeyError, match="state"):
        Normalizer.from_tensors(tensors, modes)


def test_unknown_mode_raises_value_error(data):
    with pytest.raises(ValueError, match="minmax"):
        make(data, {"action": "minmax"})
    with pytest.raises(ValueError):
        affine_from_stats(numpy_stats(data["action"]), "zscore")


def test_unknown_key_raises_key_error(data):
    norm = make(data, {"action": "limits"})
    x = torch.from_numpy(data["state"])
    with pytest.raises(KeyError, match="state"):
        norm.normalize("state", x)
    with pytest.raises(KeyError, match="state"):
        norm.unnormalize("state", x)
