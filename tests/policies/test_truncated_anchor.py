import math

import pytest
import torch
from torch import nn

from cadence.policies.networks.anchor_decoder import AnchorDecoder
from cadence.policies.processes import KnownActions
from cadence.policies.processes.focal_loss import sigmoid_focal_loss
from cadence.policies.processes.truncated_anchor import (AnchorError, TruncatedAnchorProcess, nearest_anchor,
                                                         sampling_timesteps)

TP, DA, K, COND = 6, 2, 5, 8


def fitted_process(tasks: int = 1, **kw) -> TruncatedAnchorProcess:
    process = TruncatedAnchorProcess(TP, DA, num_anchors=K, num_tasks=tasks, **kw)
    gen = torch.Generator().manual_seed(0)
    process.fit_anchors([torch.rand(60, TP, DA, generator=gen) * 2 - 1 for _ in range(tasks)], seed=0)
    return process


def decoder(seed: int = 0) -> AnchorDecoder:
    torch.manual_seed(seed)
    net = AnchorDecoder(DA, TP, COND, d_model=16, n_layers=2, n_heads=2, cond_tokens=2, ffn_mult=2,
                        level_embed_dim=8).eval()
    for layer in net.layers:          # heads start at zero (identity); make them do something
        nn.init.normal_(layer.offset.weight, std=0.1)
        nn.init.normal_(layer.film.weight, std=0.1)
    return net


class Spy(nn.Module):
    """A real decoder that records what each call saw."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, level, cond, step=None):
        out = self.net(x, level, cond)
        self.calls.append({"x": x.clone(), "level": level.clone(), "out": out})
        return out

    def layer_outputs(self, x, level, cond):
        self.calls.append({"x": x.clone(), "level": level.clone()})
        return self.net.layer_outputs(x, level, cond)


def test_nearest_anchor_uses_mean_per_step_distance():
    # x0 = 0; anchor 0 is far at one step (mean step distance 0.5, flat L2 2.0),
    # anchor 1 is moderately off everywhere (mean step distance 0.8, flat L2 1.6)
    x0 = torch.zeros(1, 4, 1)
    anchors = torch.tensor([[2.0, 0, 0, 0], [0.8, 0.8, 0.8, 0.8]]).view(1, 2, 4, 1)
    assert nearest_anchor(x0, anchors).item() == 0
    flat = (x0.flatten(1)[:, None] - anchors.flatten(2)).norm(dim=-1).argmin(dim=1)
    assert flat.item() == 1               # a flat Euclidean label would differ


def test_nearest_anchor_labels_perturbed_anchors():
    gen = torch.Generator().manual_seed(1)
    anchors = torch.randn(K, TP, DA, generator=gen) * 3
    labels = torch.randint(0, K, (64,), generator=gen)
    x0 = anchors[labels] + 0.05 * torch.randn(64, TP, DA, generator=gen)
    got = nearest_anchor(x0, anchors.expand(64, -1, -1, -1))
    assert torch.equal(got, labels)
    brute = torch.tensor([min(range(K), key=lambda k: sum(float((x0[i, t] - anchors[k, t]).norm())
                                                          for t in range(TP))) for i in range(64)])
    assert torch.equal(got, brute)


def test_focal_loss_matches_its_formula():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 5, generator=gen) * 3
    targets = (torch.rand(7, 5, generator=gen) > 0.7).float()
    for alpha, gamma in [(0.25, 2.0), (0.5, 0.0), (0.9, 1.5)]:
        total = 0.0
        for z, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
            p = 1 / (1 + math.exp(-z))
            p_t = p if y == 1 else 1 - p
            a_t = alpha if y == 1 else 1 - alpha
            total += -a_t * (1 - p_t) ** gamma * math.log(p_t)
        assert sigmoid_focal_loss(logits, targets, alpha, gamma).item() == pytest.approx(total / logits.numel(),
                                                                                          rel=1e-5)
    # gamma = 0, alpha = 0.5 is half the binary cross-entropy
    bce = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert sigmoid_focal_loss(logits, targets, 0.5, 0.0).item() == pytest.approx(0.5 * bce.item(), rel=1e-6)


def test_training_noise_stays_within_the_truncation():
    process = fitted_process(trunc_steps=20)
    spy = Spy(decoder())
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(256, TP, DA, generator=gen) * 2 - 1
    loss = process.loss(spy, x0, torch.randn(256, COND, generator=gen), gen)
    assert loss.ndim == 0 and torch.isfinite(loss)
    (call,) = spy.calls
    level = call["level"].long()
    assert level.min() >= 0 and level.max() < 20 and level.unique().numel() > 10
    # the residual around the scaled anchor has the std of the sampled timestep, at most sigma(19)
    a = process.alphas_cumprod[level].float().view(-1, 1, 1, 1)
    residual = call["x"] - a.sqrt() * process.anchors[0]
    assert residual.abs().max() <= 5 * process.noise_std(19)
    assert residual.std().item() <= process.noise_std(19)
    assert process.noise_std(49) < 0.1                    # the default truncation: std below 0.1


def test_loss_is_focal_on_nearest_plus_l1_summed_over_layers():
    process = fitted_process()
    net = decoder()
    gen = torch.Generator().manual_seed(4)
    x0 = torch.rand(16, TP, DA, generator=gen) * 2 - 1
    cond = torch.randn(16, COND, generator=gen)
    got = process.loss(net, x0, cond, torch.Generator().manual_seed(5))
    # recompute with the same draws
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, process.trunc_steps, (16,), generator=g)
    noise = torch.randn(16, K, TP, DA, generator=g)
    anchors = process.anchors[0].expand(16, -1, -1, -1)
    x_t = process.noised(anchors, t, noise)
    label = nearest_anchor(x0, anchors)
    want = 0.0
    for chunks, logits in net.layer_outputs(x_t, t.float(), cond):
        want = want + 10.0 * sigmoid_focal_loss(logits, nn.functional.one_hot(label, K).float()) \
            + 8.0 * (chunks[torch.arange(16), label] - x0).abs().mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_sampling_schedule_is_self_consistent():
    assert sampling_timesteps(49, 1) == [49]
    assert sampling_timesteps(49, 2) == [49, 24]
    assert sampling_timesteps(49, 4) == [49, 36, 24, 12]
    assert sampling_timesteps(3, 4) == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="sample_steps"):
        sampling_timesteps(3, 5)
    process = fitted_process(sample_steps=3)
    spy = Spy(decoder())
    eps = torch.randn(2, K, TP, DA, generator=torch.Generator().manual_seed(6))
    process.sample(spy, torch.randn(2, COND), (2, TP, DA), noise=eps)
    alphas = process.alphas_cumprod
    steps = process.timesteps()
    assert [c["level"][0].item() for c in spy.calls] == steps == [49, 32, 16]
    # every call's input was noised to exactly the level the model sees
    prev = process.anchors[0].expand(2, -1, -1, -1)
    eps_now = eps
    for i, call in enumerate(spy.calls):
        a = float(alphas[steps[i]])
        want = (math.sqrt(a) * prev + math.sqrt(1 - a) * eps_now).clamp(-1, 1)
        torch.testing.assert_close(call["x"], want, atol=1e-5, rtol=0)
        chunks = call["out"][0]
        eps_now = (call["x"] - math.sqrt(a) * chunks) / math.sqrt(1 - a)
        prev = chunks


def test_zero_noise_is_deterministic_and_returns_the_most_confident_mode():
    process = fitted_process()
    net = decoder()
    cond = torch.randn(3, COND, generator=torch.Generator().manual_seed(7))
    zero = torch.zeros(3, TP, DA)
    a = process.sample(net, cond, (3, TP, DA), generator=torch.Generator().manual_seed(1), noise=zero)
    b = process.sample(net, cond, (3, TP, DA), generator=torch.Generator().manual_seed(2), noise=zero)
    assert torch.equal(a, b)
    chunks, logits = process.predict_modes(net, cond, (3, TP, DA), noise=zero)
    assert torch.equal(a, chunks[torch.arange(3), logits.argmax(dim=1)])
    # random noise moves the answer: the noise is really used
    c = process.sample(net, cond, (3, TP, DA), generator=torch.Generator().manual_seed(1))
    assert (c - a).abs().max() > 1e-4


def test_sampling_a_mode_by_confidence_covers_modes():
    process = fitted_process(select="sample", temperature=1.0)
    logits = torch.zeros(2000, K)
    logits[:, 0] = math.log(3.0)                    # mode 0: 3 / (3 + 4) of the draws
    picks = process.choose(logits, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == set(range(K))
    assert abs((picks == 0).float().mean().item() - 3 / 7) < 0.04
    assert torch.equal(fitted_process().choose(logits), torch.zeros(2000, dtype=torch.long))


def test_modes_are_refined_independently():
    net = decoder()
    gen = torch.Generator().manual_seed(8)
    x, cond = torch.randn(2, K, TP, DA, generator=gen), torch.randn(2, COND, generator=gen)
    level = torch.tensor([10.0, 30.0])
    chunks, logits = net(x, level, cond)
    assert chunks.shape == (2, K, TP, DA) and logits.shape == (2, K)
    x2 = x.clone()
    x2[:, 0] += 1.0
    chunks2, logits2 = net(x2, level, cond)
    torch.testing.assert_close(chunks2[:, 1:], chunks[:, 1:])
    torch.testing.assert_close(logits2[:, 1:], logits[:, 1:])
    assert (chunks2[:, 0] - chunks[:, 0]).abs().max() > 1e-3


def test_known_prefix_is_reproduced():
    process = fitted_process()
    values = torch.rand(2, TP, DA) * 2 - 1
    mask = torch.zeros(TP, dtype=torch.bool)
    mask[1:3] = True
    out = process.sample(decoder(), torch.randn(2, COND), (2, TP, DA), known=KnownActions(values, mask))
    torch.testing.assert_close(out[:, 1:3], values[:, 1:3])


def test_per_task_anchors_follow_the_task_index():
    process = fitted_process(tasks=2)
    assert not torch.equal(process.anchors[0], process.anchors[1])
    got = process.task_anchors(3, torch.tensor([1, 0, 1]), "cpu")
    assert torch.equal(got[0], process.anchors[1]) and torch.equal(got[1], process.anchors[0])
    with pytest.raises(AnchorError, match="task_id"):
        process.task_anchors(3, None, "cpu")


def test_unfitted_anchors_and_bad_settings_are_refused():
    process = TruncatedAnchorProcess(TP, DA, num_anchors=K)
    with pytest.raises(AnchorError, match="never fitted"):
        process.sample(decoder(), torch.randn(1, COND), (1, TP, DA))
    with pytest.raises(AnchorError, match="fewer than num_anchors"):
        process.fit_anchors([torch.zeros(3, TP, DA)])
    with pytest.raises(ValueError, match="start_step"):
        TruncatedAnchorProcess(TP, DA, trunc_steps=50, start_step=50)
    with pytest.raises(ValueError, match="select"):
        TruncatedAnchorProcess(TP, DA, select="best")
    with pytest.raises(ValueError, match="sample_steps"):
        fitted_process(start_step=2).with_steps(4)
    assert fitted_process().with_steps(4).timesteps() == [49, 36, 24, 12]
