import math

import pytest
import torch

from cadence.policies.rl.exploration_noise import ExplorationNoise


@pytest.mark.parametrize("schedule", ["fixed", "decay", "learn", "learn_decay"])
def test_sigma_stays_within_its_bounds_whatever_the_weights(schedule):
    torch.manual_seed(0)
    noise = ExplorationNoise(cond_dim=6, chunk_numel=10, sigma_min=0.05, sigma_max=0.2, schedule=schedule, hidden=16)
    for p in noise.parameters():
        torch.nn.init.normal_(p, std=20.0)        # saturate the tanh both ways
    cond = torch.randn(256, 6) * 10
    seen = []
    for progress in (0.0, 0.3, 0.6, 1.0):
        upper = noise.upper(progress)
        for t in (0.0, 0.5, 0.75):
            sigma = noise(cond, t, progress)
            assert sigma.shape == (256, 10)
            assert (sigma >= 0.05 - 1e-7).all() and (sigma <= upper + 1e-7).all() and upper <= 0.2
            seen.append(sigma)
    spread = torch.cat(seen)
    if schedule.startswith("learn"):      # learned: the whole range is reachable
        assert spread.min() < 0.051 and spread.max() > 0.19
    else:
        assert torch.all(seen[0] == 0.2)


def test_decay_holds_then_anneals_to_its_floor():
    noise = ExplorationNoise(4, 2, sigma_min=0.1, sigma_max=0.3, schedule="learn_decay", hold=0.35, floor=0.7)
    assert noise.upper(0.0) == noise.upper(0.35) == 0.3
    end = 0.1 + 0.7 * 0.2
    assert math.isclose(noise.upper(1.0), end) and end < noise.upper(0.7) < 0.3
    assert math.isclose(noise.upper(0.35 + 0.65 / 2), (0.3 + end) / 2)
    assert ExplorationNoise(4, 2, 0.1, 0.3, schedule="learn").upper(1.0) == 0.3


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        ExplorationNoise(4, 2, schedule="cosine")
    with pytest.raises(ValueError, match="sigma_min"):
        ExplorationNoise(4, 2, sigma_min=0.2, sigma_max=0.1)
