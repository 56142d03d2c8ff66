"""ObsEncoder: low-dimensional keys of any per-step shape are normalised and flattened."""
import numpy as np
import torch

from cadence.datasets.normalizer import Normalizer, module_name
from cadence.policies.obs_encoder import ObsEncoder


def _normalizer(key, shape, rng):
    low = rng.normal(size=shape)
    stats = {"min": low, "max": low + rng.uniform(1, 2, size=shape), "mean": low, "std": np.ones(shape)}
    return Normalizer.from_stats({key: stats}, {key: "limits"})


def test_a_matrix_key_encodes_like_its_flattened_vector():
    rng = np.random.default_rng(0)
    matrix = ObsEncoder({"keypoint": (9, 2)}, obs_horizon=2, out_dim=16)
    vector = ObsEncoder({"keypoint": (18,)}, obs_horizon=2, out_dim=16)
    vector.load_state_dict(matrix.state_dict())
    norm_m = _normalizer("keypoint", (9, 2), rng)
    scale, offset = norm_m.params("keypoint")
    norm_v = Normalizer()
    norm_v.add("keypoint", "limits", scale.reshape(18), offset.reshape(18))
    obs = torch.randn(3, 2, 9, 2)
    torch.testing.assert_close(matrix({"keypoint": obs}, norm_m), vector({"keypoint": obs.flatten(2)}, norm_v))


def test_images_and_low_dim_keys_are_told_apart_by_shape():
    enc = ObsEncoder({"img": (32, 32, 3), "keypoint": (9, 2), "agent_pos": (2,)}, obs_horizon=2, out_dim=8)
    assert enc.image_keys == ["img"] and enc.lowdim_keys == ["agent_pos", "keypoint"]


def test_dotted_keys_as_lerobot_names_them_work_and_round_trip():
    rng = np.random.default_rng(1)
    shapes = {"observation.state": (3,), "observation.images.top": (32, 32, 3)}
    enc = ObsEncoder(shapes, obs_horizon=2, out_dim=8)
    norm = _normalizer("observation.state", (3,), rng)
    again = Normalizer.from_tensors(norm.tensors(), norm.modes)
    obs = {"observation.state": torch.randn(2, 2, 3),
           "observation.images.top": torch.randint(0, 256, (2, 2, 32, 32, 3), dtype=torch.uint8)}
    torch.testing.assert_close(enc(obs, norm), enc(obs, again))
    assert {module_name("a.b"), module_name("a%2Eb"), module_name("a_b")} == {"a%2Eb", "a%252Eb", "a_b"}
