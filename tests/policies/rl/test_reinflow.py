import pytest
import torch

from cadence.policies.rl.exploration_noise import ExplorationNoise
from cadence.policies.rl.reinflow import ReinFlowActor
from tests.policies.test_policy import make_policy

OBS = {"state": torch.rand(5, 2, 6) * 2 - 1}


def make_actor(process="flow", steps=4, schedule="learn", reduce="mean", sigma=(0.05, 0.2)):
    policy = make_policy(process, network="mlp", mlp={"width": 32, "n_layers": 1}, shortcut={"max_steps": 8},
                         sample_steps=steps)
    torch.nn.init.normal_(policy.denoiser.out[1].weight, std=0.05)    # a non-trivial velocity field
    policy.process = policy.process.with_steps(steps)
    noise = ExplorationNoise(policy.encoder.out_dim, 16 * 2, *sigma, schedule=schedule, hidden=16)
    return ReinFlowActor(policy, noise, reduce)


@pytest.mark.parametrize("process,steps", [("flow", 4), ("flow", 1), ("shortcut", 4), ("shortcut", 2)])
def test_rescoring_the_sampled_chain_gives_ratio_one(process, steps):
    actor = make_actor(process, steps)
    sample = actor.explore(OBS, torch.Generator().manual_seed(0), progress=0.2)
    assert sample.chain.shape == (5, steps + 1, 16, 2) and sample.log_prob.shape == (5,)
    assert torch.allclose(sample.chunk.actions, actor.policy.normalizer.unnormalize("action", sample.chain[:, -1]))
    actor.train()
    log_prob, entropy = actor.log_prob(OBS, sample.chain, progress=0.2)
    assert log_prob.requires_grad and entropy.shape == (5,)
    assert torch.exp(log_prob - sample.log_prob).sub(1).abs().max() <= 1e-6
    log_prob.sum().backward()           # gradients reach the velocity field and the noise network
    assert actor.policy.denoiser.out[1].weight.grad.abs().sum() > 0
    assert actor.noise.net[-1].weight.grad.abs().sum() > 0


def test_chain_log_prob_is_the_sum_of_gaussian_log_densities():
    actor = make_actor(steps=3, reduce="sum")
    sample = actor.explore(OBS, torch.Generator().manual_seed(1))
    chain, policy, K = sample.chain, actor.policy, 3
    cond = policy.encoder(OBS, policy.normalizer)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(chain[:, 0]).sum((1, 2))
    for k in range(K):
        level = torch.full((5,), 100.0 * k / K)
        mean = chain[:, k] + policy.denoiser(chain[:, k], level, cond) / K
        std = actor.noise(cond, k / K).view(5, 16, 2)
        expected += torch.distributions.Normal(mean, std).log_prob(chain[:, k + 1]).sum((1, 2))
    assert torch.allclose(sample.log_prob, expected, rtol=1e-5)
    mean_actor = make_actor(steps=3, reduce="mean")
    mean_actor.load_state_dict(actor.state_dict())
    mean_lp, _ = mean_actor.log_prob(OBS, chain)
    assert torch.allclose(mean_lp, expected / (4 * 32), rtol=1e-5)


@pytest.mark.parametrize("process", ["flow", "shortcut"])
def test_without_noise_the_chain_is_the_pretrained_ode(process):
    actor = make_actor(process, steps=4, schedule="fixed", sigma=(1e-7, 1e-7))
    sample = actor.explore(OBS, torch.Generator().manual_seed(2))
    pretrained = actor.policy.predict_chunk(OBS, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(sample.chunk.actions, pretrained.actions, atol=1e-5)
    assert torch.allclose(actor.act(OBS, torch.Generator().manual_seed(2)).actions, pretrained.actions)
    start = sample.chain[:, 0]
    assert torch.allclose(actor.ode(OBS, start), sample.chain[:, -1], atol=1e-5)


def test_only_flow_policies_and_known_reductions():
    policy = make_policy("ddpm")
    with pytest.raises(ValueError, match="flow or shortcut"):
        ReinFlowActor(policy, ExplorationNoise(policy.encoder.out_dim, 32))
    with pytest.raises(ValueError, match="logprob_reduce"):
        make_actor(reduce="max")
