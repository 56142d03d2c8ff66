import math

import pytest
import torch
from torch import nn

from cadence.policies.networks.unet1d import ConditionalUnet1D
from cadence.policies.processes.streaming import StreamingProcess, chunk_indices, chunk_tops

TP, TO, TA, COND = 20, 2, 8, 6


class Spy(nn.Module):
    """A real UNet that records the input and levels of every call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = ConditionalUnet1D(2, COND, down_dims=(8, 16), n_groups=4, level_embed_dim=8).eval()
        self.calls = []

    def forward(self, x, level, cond, step=None):
        out = self.net(x, level, cond)
        self.calls.append({"x": x.clone(), "level": level.clone(), "eps": out})
        return out


def test_chunk_levels_on_known_horizons():
    assert chunk_indices(20, 2, 8) == [0] * 9 + [1] * 11          # h = 2; observation slot and tail folded in
    assert chunk_tops(100, chunk_indices(20, 2, 8)) == [49] * 9 + [99] * 11
    assert chunk_indices(16, 2, 4) == [0] * 5 + [1] * 4 + [2] * 7   # h = 3
    assert chunk_tops(100, chunk_indices(16, 2, 4)) == [32] * 5 + [65] * 4 + [99] * 7
    assert chunk_indices(16, 2, 8) == [0] * 16                      # one chunk: no streaming gain
    with pytest.raises(ValueError, match="no chunk"):
        chunk_indices(8, 2, 8)


def test_training_regimes_share_the_offset_along_the_chunk():
    process = StreamingProcess(TP, TO, TA, constant_prob=0.25)
    level = process.training_levels(4000, torch.Generator().manual_seed(0))
    assert level.shape == (4000, TP) and level.min() >= 0 and level.max() <= 99
    constant = (level == level[:, :1]).all(dim=1)
    offset = process.tops[None] - level
    chunkwise = (offset == offset[:, :1]).all(dim=1) & (offset[:, 0] >= 0) & (offset[:, 0] < 50)
    assert bool((constant | chunkwise).all())
    assert abs(constant.float().mean().item() - 0.25) < 0.03
    assert offset[chunkwise, 0].unique().numel() == 50                   # every offset of the band is drawn


def test_loss_uses_per_element_levels():
    process = StreamingProcess(TP, TO, TA)
    spy = Spy()
    loss = process.loss(spy, torch.rand(16, TP, 2) * 2 - 1, torch.randn(16, COND), torch.Generator().manual_seed(1))
    assert torch.isfinite(loss) and spy.calls[0]["level"].shape == (16, TP)


def test_each_replan_returns_a_clean_executed_slice_and_keeps_the_buffer_invariant():
    process = StreamingProcess(TP, TO, TA, sample_steps=2, start_steps=4)
    spy = Spy()
    gen = torch.Generator().manual_seed(2)
    cond = torch.randn(3, COND, generator=gen)
    alphas = process.alphas_cumprod
    for replan in range(3):
        spy.calls.clear()
        out = process.sample(spy, cond, (3, TP, 2), generator=gen)
        calls = spy.calls[-2:]
        assert process.calls == len(spy.calls) == (4 + 2 if replan == 0 else 2)
        # the levels of the replan's calls are the same every time: band tops, then one stride lower
        assert [c["level"][0].long().tolist() for c in calls] == [[49] * 9 + [99] * 11, [24] * 9 + [74] * 11]
        # the executed slice is the last call's clean prediction (level -1)
        last = calls[-1]
        a = alphas[last["level"][0].long()].float().view(1, TP, 1)
        x0 = ((last["x"] - (1 - a).sqrt() * last["eps"]) / a.sqrt()).clamp(-1, 1)
        torch.testing.assert_close(out[:, TO - 1: TO - 1 + TA], x0[:, TO - 1: TO - 1 + TA])
        assert process.buffer.shape == (3, TP, 2)


def test_the_shift_noises_executed_slots_to_their_label_and_appends_fresh_noise():
    process = StreamingProcess(TP, TO, TA, sample_steps=1, start_steps=2)
    spy = Spy()
    gen = torch.Generator().manual_seed(3)
    cond = torch.randn(512, COND, generator=gen)
    out = process.sample(spy, cond, (512, TP, 2), generator=gen)
    nxt = process.buffer
    a = float(alphas_top0 := process.alphas_cumprod[49])
    # observation slot: the last executed action, noised forward to level 49
    resid = (nxt[:, :TO - 1] - math.sqrt(a) * out[:, TA: TA + TO - 1]) / math.sqrt(1 - a)
    assert abs(resid.std().item() - 1) < 0.1 and abs(resid.mean().item()) < 0.1
    # the next chunk-0 slots are the old chunk-1 slots (at 49 now), unchanged
    torch.testing.assert_close(nxt[:, TO - 1: TO - 1 + TA], out[:, TO - 1 + TA: TO - 1 + 2 * TA])
    # the last chunk's slots are fresh standard noise
    tail = nxt[:, TO - 1 + TA:]
    assert abs(tail.std().item() - 1) < 0.05 and abs(tail.mean().item()) < 0.05
    assert alphas_top0 > 0


def test_reset_and_batch_changes_restart_the_buffer():
    process = StreamingProcess(TP, TO, TA, sample_steps=2, start_steps=3)
    spy = Spy()
    cond = torch.randn(2, COND)
    first = process.sample(spy, cond, (2, TP, 2), generator=torch.Generator().manual_seed(4))
    process.sample(spy, cond, (2, TP, 2), generator=torch.Generator().manual_seed(5))
    assert process.calls == 2
    process.reset()
    assert process.buffer is None
    again = process.sample(spy, cond, (2, TP, 2), generator=torch.Generator().manual_seed(4))
    assert process.calls == 5 and torch.equal(first, again)
    process.keep_rows([1])
    assert process.buffer.shape == (1, TP, 2)
    process.sample(spy, cond[1:], (1, TP, 2))
    assert process.calls == 2                       # the kept row continued
    process.sample(spy, torch.randn(4, COND), (4, TP, 2))
    assert process.calls == 5                       # another batch: a fresh start


def test_bad_settings():
    with pytest.raises(ValueError, match="sample_steps"):
        StreamingProcess(TP, TO, TA, sample_steps=51)
    with pytest.raises(ValueError, match="1 to 50 calls"):
        StreamingProcess(TP, TO, TA).with_steps(60)
    assert StreamingProcess(TP, TO, TA).with_steps(5).sample_steps == 5


def test_three_chunks_end_each_replan_at_the_band_below():
    process = StreamingProcess(16, 2, 4, train_steps=100, sample_steps=3)        # bands 0-32, 33-65, 66-99
    start, *_, end = process.step_levels()
    assert start.tolist() == [32] * 5 + [65] * 4 + [99] * 7
    assert end.tolist() == [-1] * 5 + [32] * 4 + [65] * 7
    trained = process.training_levels(20000, torch.Generator().manual_seed(0))
    for levels in process.step_levels()[:-1]:          # every level a replan shows the network was trained on
        for i, level in enumerate(levels.tolist()):
            assert (trained[:, i] == level).any()
