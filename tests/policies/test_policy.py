import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cadence.policies.action_chunk import ActionChunk
from cadence.config import PolicyConfig
from cadence.datasets.normalizer import Normalizer
from cadence.policies.factory import build_policy

STATS = {"state": {"min": np.full(6, -2.0), "max": np.full(6, 2.0)},
         "action": {"min": np.array([-1.5, -1.0]), "max": np.array([1.5, 1.5])}}


def make_policy(process="ddpm", **overrides):
    cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig),
                          {"process": process, "down_dims": [16, 32], "level_embed_dim": 16, "obs_feature_dim": 16,
                           "sample_steps": 3, **overrides})
    torch.manual_seed(0)
    norm = Normalizer.from_stats(STATS, {"state": "limits", "action": "limits"})
    return build_policy(cfg, {"state": (6,)}, 2, norm)


@pytest.mark.parametrize("process", ["ddpm", "flow", "regression"])
def test_loss_and_chunk_shapes(process):
    policy = make_policy(process)
    batch = {"state": torch.rand(4, 2, 6), "action": torch.rand(4, 16, 2)}
    loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    chunk = policy.predict_chunk({"state": torch.rand(3, 2, 6)})
    assert isinstance(chunk, ActionChunk) and chunk.actions.shape == (3, 16, 2) and chunk.start == 1
    assert chunk.executable(8).shape == (3, 8, 2)


@pytest.mark.parametrize("experts", [0, 4])
def test_transformer_policies_train_and_sample_with_the_expert_cache(experts):
    policy = make_policy("edm", network="transformer",
                         transformer={"d_model": 16, "n_layers": 2, "n_heads": 2, "num_experts": experts})
    batch = {"state": torch.rand(4, 2, 6), "action": torch.rand(4, 16, 2)}
    loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    aux = policy.denoiser.aux_loss()
    assert torch.isfinite(loss) and loss.requires_grad and (aux == 0.0 if not experts else aux.item() > 0)
    policy.eval()
    obs, noise = {"state": torch.rand(3, 2, 6)}, torch.randn(3, 16, 2)
    cached = policy.predict_chunk(obs, noise=noise).actions
    assert (policy.denoiser._cache is not None) == bool(experts)
    policy.denoiser.expert_cache = False
    uncached = policy.predict_chunk(obs, noise=noise).actions
    assert policy.denoiser._cache is None and torch.allclose(cached, uncached, atol=1e-5)


def test_unknown_network_is_named():
    with pytest.raises(ValueError, match="(?s)'lstm', expected one of .*unet.*full_key: network"):
        make_policy("edm", network="lstm")


def test_ddpm_chunks_are_unnormalised_into_the_action_range():
    # clip_sample keeps the normalised sample in [-1, 1]: in task units that is the data range.
    chunk = make_policy("ddpm").predict_chunk({"state": torch.rand(5, 2, 6)})
    low, high = torch.tensor([-1.5, -1.0]), torch.tensor([1.5, 1.5])
    assert torch.all(chunk.actions >= low - 1e-5) and torch.all(chunk.actions <= high + 1e-5)


def test_same_noise_same_chunk_and_noise_matters():
    policy = make_policy("flow")
    obs = {"state": torch.rand(2, 2, 6)}
    noise = torch.randn(2, 16, 2)
    assert torch.equal(policy.predict_chunk(obs, noise=noise).actions, policy.predict_chunk(obs, noise=noise).actions)
    assert not torch.allclose(policy.predict_chunk(obs, noise=noise).actions,
                              policy.predict_chunk(obs, noise=noise + 1).actions)


def test_executable_slice_and_bounds():
    chunk = ActionChunk(torch.arange(10.0).view(1, 10, 1), start=1)
    assert chunk.executable(3).flatten().tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        chunk.executable(10)
    with pytest.raises(ValueError):
        chunk.executable(0)


def test_horizons_are_checked():
    with pytest.raises(ValueError, match="pred_horizon"):
        make_policy("ddpm", pred_horizon=8, exec_horizon=8)
    with pytest.raises(ValueError, match="process"):
        make_policy("gan")


def test_weights_exclude_the_normalizer():
    policy = make_policy()
    assert policy.weights() and not any(k.startswith("normalizer") for k in policy.weights())
    assert any(k.startswith("normalizer") for k in policy.state_dict())


def test_actions_that_are_not_finite_are_raised_never_returned():
    from cadence.errors import CadenceError
    from cadence.policies.policy import NonFiniteActions
    from cadence.policies.search import SearchSettings

    policy = make_policy("ddpm")
    obs = {"state": torch.randn(2, policy.obs_horizon, 6)}
    assert torch.isfinite(policy.predict_chunk(obs).actions).all()
    with torch.no_grad():
        policy.denoiser.head[-1].weight.fill_(1e30)              # finite weights whose output is not
    policy.process.clip_sample = False
    for search in (None, SearchSettings(3, "best_of", "consensus")):
        policy.search = search
        with pytest.raises(NonFiniteActions, match="the policy's actions are not finite") as err:
            policy.predict_chunk(obs)
        assert isinstance(err.value, CadenceError)
