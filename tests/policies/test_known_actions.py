"""Prefix inpainting: the committed actions come back exactly and steer the rest of the chunk."""
import pytest
import torch

from cadence.policies.processes import DDPMProcess, KnownActions

from .test_ddpm import _oracle_eps
from .test_policy import make_policy


@pytest.mark.parametrize("process", ["ddpm", "flow", "regression"])
def test_prefix_is_reproduced_exactly(process):
    policy = make_policy(process)
    obs = {"state": torch.rand(3, 2, 6)}
    prefix = torch.tensor([[0.3, -0.2], [0.35, -0.1], [0.4, 0.0]]).expand(3, 3, 2)
    chunk = policy.predict_chunk(obs, noise=torch.randn(3, 16, 2), prefix=prefix)
    assert torch.allclose(chunk.executable(3), prefix, atol=1e-5)


@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_prefix_steers_the_unknown_part(process):
    policy = make_policy(process)
    obs, noise = {"state": torch.rand(2, 2, 6)}, torch.randn(2, 16, 2)
    low = policy.predict_chunk(obs, noise=noise, prefix=torch.full((2, 4, 2), -0.9)).actions
    high = policy.predict_chunk(obs, noise=noise, prefix=torch.full((2, 4, 2), 0.9)).actions
    tail = slice(1 + 4, None)
    assert not torch.allclose(low[:, tail], high[:, tail], atol=1e-4)
    # the entries before the prefix (the past) are not forced
    assert not torch.allclose(low[:, 0], torch.full((2, 2), -0.9))


def test_with_the_exact_denoiser_a_consistent_prefix_changes_nothing():
    process = DDPMProcess(100, 10)
    target = torch.linspace(-0.8, 0.8, 16 * 2).view(1, 16, 2).expand(2, 16, 2)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[1:5] = True
    out = process.sample(_oracle_eps(process, target), torch.zeros(2, 4), (2, 16, 2),
                         generator=torch.Generator().manual_seed(0), known=KnownActions(target.clone(), mask))
    assert torch.allclose(out, target, atol=1e-5)


@pytest.mark.parametrize("bad", [(3, 0, 2), (3, 16, 2), (3, 2, 3), (2, 2, 2)])
def test_prefix_shape_is_checked(bad):
    policy = make_policy("flow")
    with pytest.raises(ValueError, match="prefix must be"):
        policy.predict_chunk({"state": torch.rand(3, 2, 6)}, prefix=torch.zeros(bad))
