import pytest
import torch
from torch import nn

from cadence.policies.networks.transformer import TransformerDenoiser


def _net(**kw):
    torch.manual_seed(0)
    args = dict(action_dim=2, cond_dim=12, horizon=8, d_model=32, n_layers=2, n_heads=4, cond_tokens=2)
    return TransformerDenoiser(**{**args, **kw}).eval()


def _inputs(b=3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 8, 2, generator=gen), torch.rand(b, generator=gen) * 100, torch.randn(b, 12, generator=gen)


@pytest.mark.parametrize("attention", ["full", "causal"])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("experts", [0, 4])
def test_output_shape_and_dependence_on_every_input(attention, cross, experts):
    net = _net(attention=attention, cross_attention=cross, num_experts=experts)
    x, level, cond = _inputs()
    out = net(x, level, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, net(x, level + 30, cond))
    assert not torch.allclose(out, net(x, level, cond + 1))
    assert not torch.allclose(out, net(x + 1, level, cond))
    assert torch.equal(out, net(x, level, cond, step=3))       # no cache: the step index changes nothing


@pytest.mark.parametrize("cross", [False, True])
def test_causal_attention_hides_later_actions(cross):
    net = _net(attention="causal", cross_attention=cross)
    x, level, cond = _inputs()
    later = x.clone()
    later[:, 5:] += 1.0
    a, b = net(x, level, cond), net(later, level, cond)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6) and not torch.allclose(a[:, 5:], b[:, 5:])
    full = _net(attention="full", cross_attention=cross)
    assert not torch.allclose(full(x, level, cond)[:, :5], full(later, level, cond)[:, :5])


def test_samples_in_a_batch_do_not_interact():
    net = _net(num_experts=4)
    x, level, cond = _inputs(3)
    together = net(x, level, cond)
    alone = torch.cat([net(x[i:i + 1], level[i:i + 1], cond[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_blocks_expose_their_residual_branches_for_caches_to_wrap():
    net = _net(cross_attention=True)
    assert [b.branches() for b in net.blocks] == [["self_attn", "cross_attn", "ffn"]] * 2
    assert _net().blocks[0].branches() == ["self_attn", "ffn"]

    class Recorder(nn.Module):
        """Wraps a branch the way a cache would: same call, sees the step index."""
        def __init__(self, inner, log):
            super().__init__()
            self.inner, self.log = inner, log

        def forward(self, x, ctx):
            self.log.append(ctx.step)
            return self.inner(x, ctx)

    x, level, cond = _inputs()
    before = net(x, level, cond)
    log = []
    for block in net.blocks:
        for name in block.branches():
            setattr(block, name, Recorder(getattr(block, name), log))
    assert torch.equal(net(x, level, cond, step=7), before) and log == [7] * 6
    net.blocks[1].ffn = Recorder(lambda x, ctx: torch.zeros_like(x), [])
    assert not torch.allclose(net(x, level, cond), before)


def test_bad_inputs_name_the_problem():
    net = _net()
    x, level, cond = _inputs()
    with pytest.raises(ValueError, match="horizon"):
        net(x[:, :6], level, cond)
    with pytest.raises(ValueError, match=r"\(B, Tp\)"):
        net(x, level[:, None].expand(3, 4), cond)
    with pytest.raises(ValueError, match="divisible"):
        _net(d_model=30)
    with pytest.raises(ValueError, match="attention"):
        _net(attention="sliding")


@pytest.mark.parametrize("options", [{}, {"cross_attention": True}, {"num_experts": 4, "top_k": 2}])
def test_per_step_levels_equal_the_scalar_level_when_all_are_equal(options):
    net = _net(**options)
    x, level, cond = _inputs()
    torch.testing.assert_close(net(x, level[:, None].expand(-1, x.shape[1]), cond), net(x, level, cond))
    ramp = torch.linspace(0, 99, x.shape[1]).expand(x.shape[0], -1)
    out = net(x, ramp, cond)
    for constant in (0.0, 99.0):
        assert (out - net(x, torch.full((x.shape[0],), constant), cond)).abs().max() > 1e-3
