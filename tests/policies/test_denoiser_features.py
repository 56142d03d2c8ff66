"""The value verifier's ``denoiser`` input: the policy's own UNet run on each candidate, computed
as the policy computes it, for every process that has a clean input, refused for the others."""
from __future__ import annotations

import pytest
import torch

from cadence.policies.denoiser_features import DenoiserFeatures
from tests.deploy.onnx_cases import make_policy


def hooked(net, x, level, cond):
    """The UNet's output, its middle blocks' output and each down stage's output, read with
    forward hooks (independently of ``taps``)."""
    seen = {}
    handles = [net.mid[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("mid", o))]
    handles += [stage[1].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
                for n, stage in enumerate(net.down)]
    try:
        out = net(x, level, cond)
    finally:
        for h in handles:
            h.remove()
    return out, [seen[n] for n in range(len(net.down))], seen["mid"]


def test_the_unet_taps_are_its_forward_pass():
    net = make_policy("ddpm", down_dims=[16, 32, 64]).denoiser
    g = torch.Generator().manual_seed(0)
    x, cond, level = torch.randn(3, 16, 2, generator=g), torch.randn(3, net.spec["cond_dim"], generator=g), torch.tensor([3.0, 50.0, 99.0])
    out, skips, mid = net.taps(x, level, cond)
    want = hooked(net, x, level, cond)
    assert torch.equal(out, want[0]) and torch.equal(mid, want[2])
    assert len(skips) == 3 and all(torch.equal(a, b) for a, b in zip(skips, want[1]))


@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_features_are_the_policys_denoiser_on_the_clean_candidate(process):
    policy = make_policy(process, down_dims=[16, 32])
    noise = [0.05, 0.5]
    features = DenoiserFeatures.from_policy(policy, noise)
    g = torch.Generator().manual_seed(1)
    b, k, plan = 2, 3, policy.pred_horizon - policy.obs_horizon + 1
    cond = torch.randn(b, policy.denoiser.spec["cond_dim"], generator=g)
    plans = torch.rand(b, k, plan, 2, generator=g) * 2 - 1
    got = features.raw(cond, plans)
    assert got.shape == (b, k, features.width)
    for i in range(b):
        for j in range(k):
            chunk = torch.cat([plans[i, j, :1].expand(policy.obs_horizon - 1, 2), plans[i, j]])
            x0 = policy.normalizer.normalize(policy.action_key, chunk[None])
            parts = []
            for fraction in noise:
                if process == "ddpm":
                    t = round(fraction * policy.process.train_steps)
                    scale, level = policy.process.alphas_cumprod[t].sqrt(), float(t)
                else:
                    scale, level = 1 - fraction, (1 - fraction) * policy.process.level_scale
                out, skips, mid = hooked(policy.denoiser, scale * x0, torch.tensor([level]), cond[i:i + 1])
                parts += [*(s.mean(-1) for s in skips[:-1]), mid.flatten(1), out.flatten(1)]
            assert torch.allclose(got[i, j], torch.cat(parts, -1)[0], atol=1e-5)
    # standardized by the stored mean and spread
    features.mean.fill_(1.0)
    features.std.fill_(2.0)
    assert torch.allclose(features(cond, plans), (got - 1.0) / 2.0)


def test_a_clean_input_is_the_training_input_with_no_noise_drawn():
    ddpm = make_policy("ddpm", down_dims=[16, 32]).process
    scale, level = ddpm.clean_input(0.2)
    assert level == 20.0 and scale == pytest.approx(float(ddpm.alphas_cumprod[20].sqrt()))
    assert ddpm.clean_input(1.0)[1] == ddpm.train_steps - 1          # the last training level, not past it
    flow = make_policy("flow", down_dims=[16, 32]).process
    assert flow.clean_input(0.25) == (0.75, 0.75 * flow.level_scale)     # x_t = (1 - t) noise + t x0 at t = 0.75


def test_policies_without_a_unet_or_a_clean_input_are_refused_naming_what_they_have():
    with pytest.raises(ValueError, match="UNet denoiser.*TransformerDenoiser.*features=plan"):
        DenoiserFeatures.from_policy(make_policy("ddpm", network="transformer"))
    with pytest.raises(ValueError, match="clean input.*'edm'.*features=plan"):
        DenoiserFeatures.from_policy(make_policy("edm", down_dims=[16, 32]))
