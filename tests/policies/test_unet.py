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


def _net_and_schedule():
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 4, down_dims=(16, 32, 64), n_groups=8, level_embed_dim=16).eval()
    return net, [90.0, 60.0, 30.0, 0.0]


def test_precomputed_conditioning_equals_the_per_step_one():
    net, levels = _net_and_schedule()
    x, cond, other = torch.randn(3, 16, 2), torch.randn(3, 4), torch.randn(3, 4)
    direct = [net(x, torch.full((3,), lv), cond, step=i) for i, lv in enumerate(levels)]
    direct_other, off_schedule = net(x, torch.full((3,), levels[1]), other), net(x, torch.full((3,), 45.0), cond)
    net.precompute_conditioning = True
    assert net.prepare_sampling(levels) and not net.prepare_sampling(levels)     # built once per schedule
    for i, lv in enumerate(levels):
        torch.testing.assert_close(net(x, torch.full((3,), lv), cond, step=i), direct[i], atol=1e-5, rtol=0)
    assert net._cond_terms["cond"] is cond                                        # cond's terms computed once
    # the next chunk's observation gets its own terms
    torch.testing.assert_close(net(x, torch.full((3,), levels[1]), other, step=1), direct_other, atol=1e-5, rtol=0)
    # a level that is not the schedule's at that step takes the direct path: the same answer
    torch.testing.assert_close(net(x, torch.full((3,), 45.0), cond, step=1), off_schedule, atol=1e-5, rtol=0)


def test_precomputed_terms_follow_new_weights_and_stay_out_of_training():
    net, levels = _net_and_schedule()
    net.precompute_conditioning = True
    net.prepare_sampling(levels)
    x, cond, level = torch.randn(2, 16, 2), torch.randn(2, 4), torch.full((2,), levels[0])
    with torch.no_grad():
        net.down[0][0].film[1].bias.add_(1.0)                                    # the weights moved (training, load)
    assert net.prepare_sampling(levels)                                          # ... so the terms are rebuilt
    net.precompute_conditioning = False
    expected = net(x, level, cond, step=0)
    net.precompute_conditioning = True
    net.prepare_sampling(levels)
    torch.testing.assert_close(net(x, level, cond, step=0), expected, atol=1e-5, rtol=0)
    net.train()                                                                  # training: gradients reach every FiLM layer
    net(x, level, cond, step=0).sum().backward()
    assert net.down[0][0].film[1].weight.grad is not None and net.level_embed[1].weight.grad is not None
