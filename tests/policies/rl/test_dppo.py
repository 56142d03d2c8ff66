import math

import pytest
import torch

from cadence.policies.rl.dppo import LOG_PROB_RANGE, DPPOActor
from tests.policies.test_policy import make_policy

OBS = {"state": torch.rand(4, 2, 6) * 2 - 1}


def make_actor(steps=5, ft_steps=None, min_std=0.1):
    policy = make_policy("ddpm", network="mlp", mlp={"width": 32, "n_layers": 1})
    torch.nn.init.normal_(policy.denoiser.out[1].weight, std=0.05)
    policy.process = policy.process.with_steps(steps)
    return DPPOActor(policy, ft_steps, min_std)


@pytest.mark.parametrize("steps,ft_steps", [(5, None), (5, 2), (1, None)])
def test_rescoring_gives_ratio_one_per_denoising_step(steps, ft_steps):
    actor = make_actor(steps, ft_steps)
    sample = actor.explore(OBS, torch.Generator().manual_seed(0))
    k = ft_steps or steps
    assert sample.chain.shape == (4, steps + 1, 16, 2) and sample.log_prob.shape == (4, k)
    actor.train()
    log_prob, _ = actor.log_prob(OBS, sample.chain)
    assert torch.exp(log_prob - sample.log_prob).sub(1).abs().max() <= 1e-6
    log_prob.sum().backward()
    assert actor.policy.denoiser.out[1].weight.grad.abs().sum() > 0
    assert len(list(actor.parameters())) == len(list(actor.policy.parameters()))   # the frozen copy is not trained


def test_step_log_prob_is_the_ddim_eta1_gaussian_with_a_std_floor():
    actor = make_actor(steps=4, min_std=0.1)
    sample = actor.explore(OBS, torch.Generator().manual_seed(1))
    p, policy = actor.policy.process, actor.policy
    cond = policy.encoder(OBS, policy.normalizer)
    ts, alphas = p.timesteps(), p.alphas_cumprod.tolist()
    for i, t in enumerate(ts):
        a, a_prev = alphas[t], (alphas[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        x = sample.chain[:, i]
        eps = policy.denoiser(x, torch.full((4,), float(t)), cond)
        x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        sigma = math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        mean = math.sqrt(a_prev) * x0 + math.sqrt(max(0.0, 1 - a_prev - sigma ** 2)) * eps
        expected = torch.distributions.Normal(mean, max(sigma, 0.1)).log_prob(sample.chain[:, i + 1]).mean((1, 2))
        assert torch.allclose(sample.log_prob[:, i], expected.clamp(*LOG_PROB_RANGE), atol=1e-5), i
    assert sigma == 0.0                      # the last step: only the floor explores


def test_deterministic_evaluation_is_the_policys_ddim():
    actor = make_actor(steps=5)
    a = actor.act(OBS, torch.Generator().manual_seed(3)).actions
    assert torch.equal(a, actor.policy.predict_chunk(OBS, generator=torch.Generator().manual_seed(3)).actions)


def test_refuses_flow_policies_and_bad_settings():
    with pytest.raises(ValueError, match="DDPM"):
        DPPOActor(make_policy("flow"))
    with pytest.raises(ValueError, match="ft_steps"):
        make_actor(steps=3, ft_steps=4)
    with pytest.raises(ValueError, match="min_std"):
        make_actor(min_std=0.0)
