import math

import pytest
import torch

from cadence.policies.processes import KnownActions
from cadence.policies.processes.base import ProcessSpecError
from cadence.policies.processes.edm import EDMProcess


def _sigma_of_level(process, level):
    lo, hi = math.log(process.sigma_min), math.log(process.sigma_max)
    return (lo + level.double() / 100 * (hi - lo)).exp()


def _net_from_denoiser(process, denoiser):
    """The network F whose preconditioned output is exactly ``denoiser(x, sigma)``."""
    def net(z, level, cond, step=None):
        sigma = _sigma_of_level(process, level).view(-1, 1, 1)
        c_skip, c_out, c_in = process.scalings(sigma)
        x = z.double() / c_in
        return ((denoiser(x, sigma) - c_skip * x) / c_out).float()
    return net


def test_karras_scalings_match_their_formulas():
    process = EDMProcess(sigma_data=0.5)
    sigma = torch.tensor([1e-3, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = process.scalings(sigma)
    assert torch.allclose(c_skip, 0.25 / (sigma ** 2 + 0.25))
    assert torch.allclose(c_out, sigma * 0.5 / (sigma ** 2 + 0.25).sqrt())
    assert torch.allclose(c_in, 1 / (sigma ** 2 + 0.25).sqrt())
    assert process.level(torch.tensor([1e-3, 80.0])).tolist() == pytest.approx([0.0, 100.0], abs=1e-4)


def test_training_sigmas_are_truncated_log_logistic():
    process = EDMProcess(sigma_min=1e-3, sigma_max=80.0)
    sigma = process.sample_sigma(40_000, torch.Generator().manual_seed(0)).double()
    assert sigma.min() >= 1e-3 and sigma.max() <= 80.0
    assert sigma.median().item() == pytest.approx(0.5, rel=0.03)            # median of the log-logistic: e^loc
    # P(ln sigma <= loc + scale) = logistic(1) for the untruncated law (truncation moves it < 1e-3)
    assert (sigma.log() <= math.log(0.5) + 0.5).double().mean().item() == pytest.approx(1 / (1 + math.e ** -1), abs=0.01)


def test_training_loss_is_zero_for_the_exact_denoiser_and_positive_otherwise():
    process = EDMProcess()
    x0 = torch.rand(8, 16, 2) * 2 - 1
    exact = _net_from_denoiser(process, lambda x, sigma: x0.double())
    gen = torch.Generator().manual_seed(0)
    assert process.loss(exact, x0, torch.zeros(8, 1), generator=gen).item() < 1e-8
    assert process.loss(lambda z, level, cond: torch.zeros_like(z), x0, torch.zeros(8, 1), generator=gen).item() > 0.1


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
@pytest.mark.parametrize("steps", [1, 2, 10])
def test_sampling_with_the_exact_denoiser_lands_on_the_data(sampler, steps):
    process = EDMProcess(steps, sampler=sampler)
    target = torch.linspace(-0.9, 0.9, 32).view(1, 16, 2).expand(3, 16, 2)
    out = process.sample(_net_from_denoiser(process, lambda x, sigma: target.double()), torch.zeros(3, 4), (3, 16, 2),
                         generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, target, atol=1e-5)


def test_both_samplers_follow_the_probability_flow_ode_of_gaussian_data():
    """Data N(0, s^2): D(x, sigma) = s^2 / (s^2 + sigma^2) x and the ODE carries x_T = sigma_max n to
    x(sigma) = sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2) x_T."""
    s = 0.3
    noise = torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(1))
    results = {}
    for sampler in ("ddim", "euler"):
        process = EDMProcess(400, sampler=sampler, clip_sample=False)
        net = _net_from_denoiser(process, lambda x, sigma: s ** 2 / (s ** 2 + sigma ** 2) * x)
        results[sampler] = process.sample(net, torch.zeros(4, 1), noise.shape, noise=noise)
    exact = s / math.sqrt(s ** 2 + 80.0 ** 2) * 80.0 * noise
    assert torch.allclose(results["ddim"], exact, rtol=0.02, atol=1e-3)
    assert torch.allclose(results["ddim"], results["euler"], atol=1e-5)


def test_each_call_gets_its_step_index_and_the_level_from_levels():
    process = EDMProcess(5)
    seen = []

    def net(z, level, cond, step=None):
        seen.append((step, level[0].item()))
        return torch.zeros_like(z)
    process.sample(net, torch.zeros(2, 1), (2, 8, 2), generator=torch.Generator().manual_seed(0))
    assert seen == list(enumerate(process.levels()))
    sigmas = process.sigmas()
    assert len(sigmas) == 6 and sigmas[0] == pytest.approx(80.0) and sigmas[4] == pytest.approx(1e-3) and sigmas[5] == 0
    assert all(math.log(a / b) == pytest.approx(math.log(80 / 1e-3) / 4) for a, b in zip(sigmas[:4], sigmas[1:5]))


def test_known_actions_are_returned_exactly():
    process = EDMProcess(4)
    values = torch.rand(2, 8, 2) * 2 - 1
    mask = torch.zeros(8, dtype=torch.bool)
    mask[1:4] = True
    net = lambda z, level, cond, step=None: torch.zeros_like(z)  # noqa: E731
    out = process.sample(net, torch.zeros(2, 1), (2, 8, 2), generator=torch.Generator().manual_seed(0),
                         known=KnownActions(values, mask))
    assert torch.allclose(out[:, 1:4], values[:, 1:4], atol=1e-6)


def test_sample_steps_override_and_bad_arguments():
    assert EDMProcess(10).with_steps(3).sigmas()[:3] == EDMProcess(3).sigmas()[:3]
    with pytest.raises(ValueError, match="sampler"):
        EDMProcess(sampler="heun")
    with pytest.raises(ValueError, match="sigma_min"):
        EDMProcess(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        EDMProcess(sigma_data=-1e30)
    with pytest.raises(ValueError, match="differ by more than 1e-6 in log"):
        EDMProcess(sigma_min=3.0, sigma_max=3.0000000000000004)          # levels would be 0 / 0


@pytest.mark.parametrize("key, value", [("sigma_max", 1e39), ("sigma_data", 1e300), ("sigma_data", -1e30),
                                        ("sigma_min", 0.0)])
def test_a_policy_json_noise_level_float32_cannot_use_is_refused_by_name(key, value):
    spec = EDMProcess(10).spec()
    with pytest.raises(ProcessSpecError, match=f"'process.{key}' is .*, outside \\[1e-06, 10000.0\\]"):
        EDMProcess.from_spec({**spec, key: value})
