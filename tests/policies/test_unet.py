import pytest
import torch

from cadence.policies.networks.unet1d import ConditionalUnet1D


def test_shapes_and_conditioning_changes_the_output():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, cond_dim=8, down_dims=(16, 32, 64), n_groups=8)
    x, level = torch.randn(3, 16, 2), torch.tensor([0.0, 10.0, 50.0])
    y = net(x, level, torch.zeros(3, 8))
    assert y.shape == (3, 16, 2)
    assert not torch.allclose(y, net(x, level, torch.ones(3, 8)))            # obs condition used
    assert not torch.allclose(y, net(x, level + 20, torch.zeros(3, 8)))      # noise level used


def test_sample_independence_within_a_batch():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 4, down_dims=(16, 32), n_groups=8).eval()
    x, level, cond = torch.randn(4, 8, 2), torch.arange(4.0), torch.randn(4, 4)
    full = net(x, level, cond)
    assert torch.allclose(full[2:3], net(x[2:3], level[2:3], cond[2:3]), atol=1e-5)


def test_per_step_levels_equal_the_scalar_level_when_all_are_equal():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 4, down_dims=(16, 32, 64), n_groups=8).eval()
    x, cond, level = torch.randn(3, 16, 2), torch.randn(3, 4), torch.tensor([3.0, 50.0, 90.0])
    torch.testing.assert_close(net(x, level[:, None].expand(3, 16), cond), net(x, level, cond), atol=1e-5, rtol=0)
    # different levels along the chunk: neither end's level alone reproduces it
    ramp = torch.linspace(0, 99, 16).expand(3, 16)
    out = net(x, ramp, cond)
    for constant in (0.0, 99.0):
        assert (out - net(x, torch.full((3,), constant), cond)).abs().max() > 1e-3


def test_rejects_bad_levels_and_lengths():
    net = ConditionalUnet1D(2, 4, down_dims=(16, 32, 64), n_groups=8)
    with pytest.raises(ValueError, match=r"\(B, Tp\) = \(2, 16\)"):
        net(torch.randn(2, 16, 2), torch.zeros(2, 8), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 10, 2), torch.zeros(2), torch.zeros(2, 4))
