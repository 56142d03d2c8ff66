import pytest
import torch

from cadence.policies.processes import RectifiedFlowProcess, euler_integrate


@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_euler_is_exact_on_a_constant_velocity_field(steps):
    x0 = torch.randn(5, 16, 2, generator=torch.Generator().manual_seed(0))
    v = torch.randn(1, 16, 2, generator=torch.Generator().manual_seed(1))
    out = euler_integrate(lambda x, t, k: v.expand_as(x), x0, steps)
    assert torch.allclose(out, x0 + v, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_flow_sampling_recovers_the_target_under_the_exact_rectified_field(steps):
    # For a point target, the true rectified-flow velocity at (x, t) is (target - x) / (1 - t),
    # which is constant along each straight path: Euler is exact at any step count.
    target = torch.linspace(-1, 1, 32).view(1, 16, 2)
    process = RectifiedFlowProcess(sample_steps=steps)

    def net(x, level, cond, step=None):
        t = level.view(-1, 1, 1) / process.level_scale
        return (target - x) / (1 - t)
    out = process.sample(net, torch.zeros(4, 3), (4, 16, 2), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, target.expand(4, 16, 2), atol=1e-5)


def test_flow_loss_is_zero_for_the_exact_velocity():
    process = RectifiedFlowProcess()
    x0 = torch.rand(6, 16, 2)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    # Recreate the noise the loss will draw (same generator sequence: t first, then noise).
    t = torch.rand((6,), generator=gen_b)
    noise = torch.randn(x0.shape, generator=gen_b)
    exact = lambda x, level, cond, step=None: x0 - noise
    assert process.loss(exact, x0, torch.zeros(6, 1), generator=gen_a).item() < 1e-10
    assert torch.all((t >= 0) & (t < 1))
