import pytest
import torch

from cadence.policies.networks.mlp import MLPDenoiser


def test_shapes_zero_output_at_init_and_conditioning_matters():
    torch.manual_seed(0)
    net = MLPDenoiser(action_dim=2, pred_horizon=8, cond_dim=5, width=32, n_layers=2, level_embed_dim=8)
    x, cond = torch.randn(3, 8, 2), torch.randn(3, 5)
    assert torch.equal(net(x, torch.full((3,), 10.0), cond), torch.zeros(3, 8, 2))   # zero-initialised head
    torch.nn.init.normal_(net.out[1].weight)
    y = net(x, torch.full((3,), 10.0), cond)
    assert y.shape == (3, 8, 2)
    assert not torch.allclose(y, net(x, torch.full((3,), 90.0), cond))
    assert not torch.allclose(y, net(x, torch.full((3,), 10.0), cond + 1))
    assert torch.allclose(net(x, torch.tensor(10.0), cond), y)          # a scalar level broadcasts


def test_refuses_per_step_levels_and_wrong_chunks():
    net = MLPDenoiser(2, 8, 5, width=16, n_layers=1, level_embed_dim=8)
    with pytest.raises(ValueError, match="one level per sample"):
        net(torch.randn(2, 8, 2), torch.rand(2, 8), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, 8, 2\)"):
        net(torch.randn(2, 6, 2), torch.rand(2), torch.randn(2, 5))
