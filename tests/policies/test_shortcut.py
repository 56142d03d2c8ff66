import math

import pytest
import torch
import torch.nn.functional as F

from cadence.policies.processes.shortcut import ShortcutProcess
from tests.policies.test_policy import make_policy


class Recorder(torch.nn.Module):
    """A denoiser whose velocity is a fixed function of (x, level, cond); records every call."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, level, cond, step=None):
        self.calls.append((x.clone(), level.clone(), cond.clone()))
        return self.w * x + 0.01 * level.view(-1, 1, 1) + cond.sum(-1).view(-1, 1, 1)


def test_step_size_code_is_one_hot_of_log2_steps():
    p = ShortcutProcess(4, max_steps=8)
    assert p.extra_cond_dim == 4
    code = p.code(torch.tensor([1, 2, 4, 8]), 4, "cpu")
    assert torch.equal(code, torch.eye(4))
    assert torch.equal(p.code(4, 3, "cpu"), torch.eye(4)[[2, 2, 2]])


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampling_is_euler_with_the_step_told(steps):
    p, net = ShortcutProcess(steps, max_steps=8), Recorder()
    cond, noise = torch.randn(3, 2) * 0.1, torch.randn(3, 4, 2)
    out = p.sample(net, cond, (3, 4, 2), noise=noise)
    x = noise.clone()
    for k in range(steps):
        c = torch.cat([cond, p.code(steps, 3, "cpu")], dim=-1)
        x = x + (0.5 * x + 0.01 * (100 * k / steps) + c.sum(-1).view(-1, 1, 1)) / steps
        assert torch.allclose(net.calls[k][2], c)
        assert torch.allclose(net.calls[k][1], torch.full((3,), 100 * k / steps))
    assert len(net.calls) == steps and torch.allclose(out, x, atol=1e-6)


def test_loss_mixes_flow_and_self_consistency_targets():
    p, net = ShortcutProcess(4, max_steps=8, bootstrap_fraction=0.5), Recorder()
    x0, cond = torch.randn(4, 4, 2), torch.randn(4, 2) * 0.1
    loss = p.loss(net, x0, cond, torch.Generator().manual_seed(3))
    (xb1, lb1, cb1), (xb2, lb2, cb2), (x_t, level, c) = net.calls
    # the trained call: flow half told the finest step, bootstrap half a coarser d = 2^-i with t on its grid
    steps = torch.exp2(c[:, 2:].argmax(-1).float())
    assert torch.equal(steps[2:], torch.full((2,), 8.0)) and (steps[:2] <= 4).all()
    t = level / 100
    assert torch.allclose(t[:2] * steps[:2], torch.round(t[:2] * steps[:2]), atol=1e-5)
    # bootstrap: two half steps from x_t, told 2 * steps, the second from where the first landed
    half = 2 * steps[:2]
    assert torch.equal(cb1[:, 2:].argmax(-1), torch.log2(half).long())
    v1 = 0.5 * xb1 + 0.01 * lb1.view(-1, 1, 1) + cb1.sum(-1).view(-1, 1, 1)
    assert torch.allclose(xb1, x_t[:2]) and torch.allclose(xb2, xb1 + v1 / half.view(-1, 1, 1), atol=1e-6)
    assert torch.allclose(lb2, lb1 + 100 / half, atol=1e-4)
    v2 = 0.5 * xb2 + 0.01 * lb2.view(-1, 1, 1) + cb2.sum(-1).view(-1, 1, 1)
    # flow half: x_t on the straight path, target x0 - noise (noise recovered from x_t)
    tf = t[2:].view(-1, 1, 1)
    noise = (x_t[2:] - tf * x0[2:]) / (1 - tf)
    target = torch.cat([(v1 + v2) / 2, x0[2:] - noise])
    pred = 0.5 * x_t + 0.01 * level.view(-1, 1, 1) + c.sum(-1).view(-1, 1, 1)
    assert torch.allclose(loss, F.mse_loss(pred, target), atol=1e-5)
    loss.backward()
    assert net.w.grad is not None


def test_steps_must_be_powers_of_two_up_to_max():
    with pytest.raises(ValueError, match="power of 2"):
        ShortcutProcess(3, max_steps=8)
    with pytest.raises(ValueError, match="power of 2"):
        ShortcutProcess(4, max_steps=8).with_steps(16)
    with pytest.raises(ValueError, match="max_steps"):
        ShortcutProcess(4, max_steps=12)
    assert ShortcutProcess(4, max_steps=8).with_steps(1).sample_steps == 1


@pytest.mark.parametrize("network", ["unet", "mlp"])
def test_shortcut_policy_trains_and_samples_at_1_2_4_steps(network):
    policy = make_policy("shortcut", network=network, sample_steps=4, mlp={"width": 32, "n_layers": 1},
                         shortcut={"max_steps": 8})
    assert policy.process.extra_cond_dim == int(math.log2(8)) + 1
    batch = {"state": torch.rand(4, 2, 6), "action": torch.rand(4, 16, 2)}
    loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    for steps in (1, 2, 4):
        policy.process = policy.process.with_steps(steps)
        assert policy.predict_chunk({"state": torch.rand(3, 2, 6)}).actions.shape == (3, 16, 2)
