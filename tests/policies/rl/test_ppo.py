import torch

from cadence.policies.rl.ppo import clipped_surrogate, gae


def test_gae_matches_a_hand_computation_across_episode_ends():
    # one env, 4 decisions: success (terminated) at t=1, a time-limit cut at t=3
    r = torch.tensor([[0.0], [1.0], [0.0], [0.0]])
    v = torch.tensor([[0.5], [0.6], [0.2], [0.3]])
    nv = torch.tensor([[0.6], [9.0], [0.3], [0.4]])       # 9.0 after termination must be ignored
    term = torch.tensor([[False], [True], [False], [False]])
    ended = torch.tensor([[False], [True], [False], [True]])
    g, lam = 0.9, 0.8
    adv, ret = gae(r, v, nv, term, ended, g, lam)
    d3 = 0 + g * 0.4 - 0.3                 # truncated: bootstrap from the final observation's value
    d2 = 0 + g * 0.3 - 0.2
    d1 = 1.0 - 0.6
    d0 = 0 + g * 0.6 - 0.5
    a3, a2 = d3, d2 + g * lam * d3
    a1, a0 = d1, d0 + g * lam * d1
    assert torch.allclose(adv[:, 0], torch.tensor([a0, a1, a2, a3]))
    assert torch.allclose(ret, adv + v)


def test_clipped_surrogate_per_decision_and_per_denoising_step():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5, 1.05]))
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    loss, stats = clipped_surrogate(new, old, adv, clip=0.1)
    expected = -torch.tensor([1.0, 1.1, -0.9, -2.1]).mean()      # min(r A, clip(r) A) per sample
    assert torch.allclose(loss, expected)
    assert abs(stats["ratio_max_dev"] - 0.5) < 1e-6 and stats["clipfrac"] == 0.5
    # DPPO: (B, K') ratios, advantage weighted per denoising step
    weights = torch.tensor([0.5, 1.0])
    loss2, _ = clipped_surrogate(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([2.0, -1.0]), 0.1, weights)
    assert torch.allclose(loss2, -torch.tensor([1.0, 2.0, -0.5, -1.0]).mean())


def test_gaussian_helpers_match_torch_distributions():
    from cadence.policies.rl.chain import gaussian_entropy, gaussian_log_prob

    x, mean, std = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5, 3) + 0.05
    normal = torch.distributions.Normal(mean, std)
    assert torch.allclose(gaussian_log_prob(x, mean, std), normal.log_prob(x), atol=1e-6)
    assert torch.allclose(gaussian_entropy(std), normal.entropy(), atol=1e-6)
