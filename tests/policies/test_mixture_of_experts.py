import pytest
import torch

from cadence.policies.networks.mixture_of_experts import MixtureOfExperts, Routing, balance_loss
from cadence.policies.networks.transformer import BranchContext, TransformerDenoiser
from cadence.policies.processes.edm import EDMProcess


def _moe(experts=4, top_k=2, dim=16):
    torch.manual_seed(0)
    return MixtureOfExperts(dim, 32, experts, top_k).eval()


def _ctx(c, step=None, cached=False):
    return BranchContext(c, None, None, step, cached)


def test_routing_is_one_choice_per_noise_level_shared_by_all_tokens_and_samples():
    moe = _moe()
    c = torch.randn(1, 16).expand(5, 16)                 # five samples at the same noise level
    routing = moe.route(c)
    assert (routing.experts == routing.experts[0]).all() and torch.allclose(routing.weights, routing.weights[:1])
    assert torch.allclose(routing.weights.sum(-1), torch.ones(5))
    x = torch.randn(5, 7, 16)
    out = moe(x, _ctx(c))
    h = moe.norm(x)
    manual = sum(w * moe.experts[e](h) for e, w in zip(routing.experts[0].tolist(), routing.weights[0]))
    assert torch.allclose(out, manual, atol=1e-6)        # every token of every sample: the same two experts


def test_the_router_sees_only_the_noise_embedding():
    moe = _moe()
    c = torch.randn(2, 16)
    x = torch.randn(2, 5, 16)
    a = moe(x, _ctx(c))
    b = moe(x * 3 + 1, _ctx(c))
    r = moe.route(c)
    h = moe.norm(x * 3 + 1)
    for i in range(2):                                  # different tokens, same experts and weights
        manual = sum(w * moe.experts[e](h[i]) for e, w in zip(r.experts[i].tolist(), r.weights[i]))
        assert torch.allclose(b[i], manual, atol=1e-6)
    assert not torch.allclose(a, b)


def test_fused_layer_equals_the_weighted_sum_of_its_experts():
    moe = _moe(experts=6, top_k=3)
    c_steps = torch.randn(5, 16)
    moe.fuse(c_steps)
    x = torch.randn(2, 9, 16)
    for step in range(5):
        c = c_steps[step:step + 1].expand(2, 16)
        assert torch.allclose(moe(x, _ctx(c, step, cached=True)), moe(x, _ctx(c)), atol=1e-5)
    assert moe._fused[0].shape == (5, 3 * 32, 16) and moe._fused[2].shape == (5, 16, 3 * 32)


def test_balance_loss_is_top_k_when_uniform_and_larger_when_collapsed():
    experts = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0]])
    uniform = Routing(experts, torch.full((4, 2), 0.5), torch.full((4, 4), 0.25))
    assert balance_loss(uniform, 4).item() == pytest.approx(2.0)
    collapsed = Routing(torch.tensor([[0, 1]] * 4), torch.full((4, 2), 0.5), torch.full((4, 4), 0.25))
    assert balance_loss(collapsed, 4).item() == pytest.approx(4.0)


def test_training_adds_the_weighted_balance_loss_and_it_trains_the_router():
    net = TransformerDenoiser(2, 8, 8, d_model=16, n_layers=2, n_heads=2, num_experts=4, top_k=2, balance_weight=0.5)
    net.train()
    net(torch.randn(4, 8, 2), torch.rand(4) * 100, torch.randn(4, 8))
    layers = [b.ffn for b in net.blocks]
    expected = 0.5 * torch.stack([m.last_balance_loss for m in layers]).mean()
    aux = net.aux_loss()
    assert torch.allclose(aux, expected) and aux.item() > 0
    aux.backward()
    assert layers[0].router[0].weight.grad.abs().sum() > 0
    dense = TransformerDenoiser(2, 8, 8, d_model=16, n_layers=1, n_heads=2)
    assert dense.aux_loss() == 0.0


def _mode_net(**kw):
    torch.manual_seed(0)
    return TransformerDenoiser(2, 12, 8, d_model=32, n_layers=3, n_heads=4, num_experts=4, top_k=2, **kw).eval()


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_cached_and_uncached_sampling_give_the_same_actions(sampler):
    net = _mode_net()
    process = EDMProcess(10, sampler=sampler)
    cond = torch.randn(4, 12)
    noise = torch.randn(4, 8, 2, generator=torch.Generator().manual_seed(3))
    uncached = process.sample(net, cond, (4, 8, 2), noise=noise)
    assert net.prepare_sampling(process.levels()) is True
    cached = process.sample(net, cond, (4, 8, 2), noise=noise)
    assert torch.allclose(cached, uncached, atol=1e-5)
    assert not net.prepare_sampling(process.levels())        # same schedule and weights: kept


def test_cache_follows_the_schedule_and_the_weights_and_is_never_used_in_training():
    net = _mode_net()
    process = EDMProcess(10)
    net.prepare_sampling(process.levels())
    with pytest.raises(IndexError, match="prepare_sampling"):
        net(torch.randn(1, 8, 2), torch.tensor([50.0]), torch.randn(1, 12), step=10)
    assert net.prepare_sampling(EDMProcess(4).levels())       # new schedule: rebuilt
    with torch.no_grad():
        net.blocks[0].ffn.experts[0].up.weight.add_(0.1)      # weights moved (optimizer, EMA): rebuilt
    assert net.prepare_sampling(EDMProcess(4).levels())
    net.train()
    assert net._cache is None
    off = _mode_net(expert_cache=False)
    assert not off.prepare_sampling(process.levels()) and off._cache is None


def test_a_schedule_whose_fused_experts_would_not_fit_routes_at_every_step_instead(monkeypatch):
    import cadence.policies.networks.transformer as transformer

    net, process = _mode_net(), EDMProcess(10)
    x, cond = torch.randn(1, 8, 2), torch.randn(1, 12)
    with torch.no_grad():
        uncached = [_mode_net(expert_cache=False)(x, torch.tensor([float(v)]), cond) for v in process.levels()]
    monkeypatch.setattr(transformer, "MAX_EXPERT_CACHE", 1000)         # 10 steps of experts are far more
    assert not net.prepare_sampling(process.levels()) and net._cache is None
    with torch.no_grad():
        routed = [net(x, torch.tensor([float(v)]), cond, step=k) for k, v in enumerate(process.levels())]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(routed, uncached))


def test_expert_routing_table_matches_the_cache():
    net = _mode_net()
    process = EDMProcess(6)
    table = net.expert_routing(process.levels())
    assert len(table) == 3 and all(len(layer) == 6 for layer in table)
    net.prepare_sampling(process.levels())
    layer = net.blocks[1].ffn
    for step, choice in enumerate(table[1]):
        experts = [e for e, _ in choice]
        assert len(experts) == 2 and sum(w for _, w in choice) == pytest.approx(1.0, abs=1e-3)
        gate = torch.cat([layer.experts[e].gate.weight for e in experts])
        assert torch.equal(layer._fused[0][step], gate)
