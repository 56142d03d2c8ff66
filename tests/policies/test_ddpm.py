import math

import pytest
import torch

from cadence.policies.processes import DDPMProcess, cosine_alphas_cumprod


def test_cosine_schedule_matches_formula_and_is_monotone():
    T, s = 100, 0.008
    a = cosine_alphas_cumprod(T)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    # Without the beta cap, alpha_bar_t = f((t+1)/T) / f(0); the cap only binds at the very end.
    for t in (0, 10, 50, 90):
        assert a[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert torch.all(a[1:] < a[:-1]) and 0 < a[-1] < 1e-3 and a[0] > 0.999


def test_ddim_timesteps_are_evenly_spaced_and_descending():
    assert DDPMProcess(100, 10).timesteps() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert DDPMProcess(100, 100).timesteps() == list(range(99, -1, -1))
    with pytest.raises(ValueError):
        DDPMProcess(100, 0)


def _oracle_eps(process, target):
    """The exact epsilon-prediction for a data distribution that is a single point ``target``."""
    alphas = process.alphas_cumprod

    def net(x, level, cond, step=None):
        a = alphas[level.long()].view(-1, 1, 1)
        return ((x.double() - a.sqrt() * target.double()) / (1 - a).sqrt()).float()
    return net


@pytest.mark.parametrize("steps", [1, 10, 100])
def test_ddim_with_the_exact_denoiser_lands_on_the_data(steps):
    process = DDPMProcess(100, steps)
    target = torch.linspace(-0.9, 0.9, 16 * 2).view(1, 16, 2).expand(3, 16, 2)
    gen = torch.Generator().manual_seed(0)
    out = process.sample(_oracle_eps(process, target), torch.zeros(3, 4), (3, 16, 2), generator=gen)
    assert torch.allclose(out, target, atol=1e-5)


def test_ddim_is_deterministic_given_the_generator():
    process = DDPMProcess(100, 10)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    call = lambda x, level, cond, step=None: net(x) * 0.1 + level.view(-1, 1, 1) * 1e-3
    run = lambda seed: process.sample(call, torch.zeros(4, 3), (4, 16, 2), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(7), run(7))
    assert not torch.allclose(run(7), run(8))


def test_training_loss_is_zero_for_the_exact_denoiser_and_positive_otherwise():
    process = DDPMProcess(100, 10)
    x0 = torch.rand(8, 16, 2) * 2 - 1
    # the oracle needs to know x0 per sample: it is the target itself
    exact = _oracle_eps(process, x0)
    gen = torch.Generator().manual_seed(1)
    assert process.loss(exact, x0, torch.zeros(8, 1), generator=gen).item() < 1e-8
    assert process.loss(lambda x, l, c: torch.zeros_like(x), x0, torch.zeros(8, 1), generator=gen).item() > 0.5


def test_sampling_passes_each_call_its_step_index_and_the_level_of_levels():
    process = DDPMProcess(100, 5)
    seen = []

    def net(x, level, cond, step=None):
        seen.append((step, level[0].item()))
        return torch.zeros_like(x)
    process.sample(net, torch.zeros(2, 3), (2, 16, 2), generator=torch.Generator().manual_seed(0))
    assert seen == list(enumerate(process.levels())) and process.levels() == [80.0, 60.0, 40.0, 20.0, 0.0]
