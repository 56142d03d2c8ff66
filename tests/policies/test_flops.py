import pytest
import torch

from cadence.policies.flops import active_parameters, count_flops, denoiser_flops
from cadence.policies.networks.transformer import TransformerDenoiser
from cadence.policies.networks.unet1d import ConditionalUnet1D
from cadence.policies.processes.edm import EDMProcess

B, TP, DA, DC, D, LAYERS, TOKENS = 2, 8, 2, 12, 32, 2, 2
S = 1 + TOKENS + TP          # noise token, observation tokens, action tokens


def _call(net, step=None, level=50.0):
    x, cond = torch.randn(B, TP, DA), torch.randn(B, DC)
    return count_flops(lambda: net(x, torch.full((B,), level), cond, step=step))


@pytest.mark.parametrize("attention", ["full", "causal"])
def test_dense_transformer_flops_match_the_matmul_count(attention):
    net = TransformerDenoiser(DA, DC, TP, d_model=D, n_layers=LAYERS, n_heads=4, cond_tokens=TOKENS, ffn_mult=4,
                              attention=attention).eval()
    flops = denoiser_flops(net, _call(net))
    hidden = 4 * D
    assert flops["ffn"] == LAYERS * 2 * B * S * 3 * D * hidden
    projections = 2 * B * S * (D * D + D * 2 * D + D * D)
    scores_and_mix = 2 * 2 * B * S * S * D
    assert flops["self_attn"] == LAYERS * (projections + scores_and_mix)
    assert flops["router"] == 0 and flops["cross_attn"] == 0
    embed = 2 * B * (D * D + D * D)                      # level MLP
    io = 2 * B * (TP * DA * D + DC * TOKENS * D + TP * D * DA)
    assert flops["other"] == embed + io
    assert flops["total"] == sum(flops[k] for k in ("self_attn", "cross_attn", "ffn", "router", "other"))


def test_mixture_charges_only_the_routed_experts_and_the_cache_drops_the_router():
    kw = dict(d_model=D, n_layers=LAYERS, n_heads=4, cond_tokens=TOKENS, ffn_mult=4)
    torch.manual_seed(0)
    dense = TransformerDenoiser(DA, DC, TP, **kw).eval()
    mode = TransformerDenoiser(DA, DC, TP, num_experts=4, top_k=2, **kw).eval()
    one_expert = denoiser_flops(dense, _call(dense))["ffn"]
    uncached = denoiser_flops(mode, _call(mode))
    assert uncached["ffn"] == 2 * one_expert and uncached["router"] == LAYERS * 2 * B * (D * 2 * D + 2 * D * 4)
    process = EDMProcess(10)
    mode.prepare_sampling(process.levels())
    cached = denoiser_flops(mode, _call(mode, step=4, level=process.levels()[4]))
    assert cached["ffn"] == uncached["ffn"] and cached["router"] == 0
    assert cached["other"] == uncached["other"] - 2 * B * 2 * D * D      # stored noise embedding


def test_a_unet_is_all_other():
    net = ConditionalUnet1D(DA, DC, (16, 32)).eval()
    flops = denoiser_flops(net, _call(net))
    assert flops["total"] > 0 and flops["other"] == flops["total"]


def test_active_parameters_leave_out_unrouted_experts_and_cached_work():
    kw = dict(d_model=D, n_layers=LAYERS, n_heads=4, cond_tokens=TOKENS, ffn_mult=4)
    dense = TransformerDenoiser(DA, DC, TP, **kw)
    mode = TransformerDenoiser(DA, DC, TP, num_experts=4, top_k=2, **kw)
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    expert = 3 * D * 4 * D
    router = D * 2 * D + 2 * D + 2 * D * 4 + 4
    level = 2 * (D * D + D)
    assert active_parameters(dense) == total(dense) == active_parameters(dense, cached=True)
    assert active_parameters(mode) == total(mode) - LAYERS * 2 * expert
    assert active_parameters(mode, cached=True) == total(mode) - LAYERS * (2 * expert + router) - level
