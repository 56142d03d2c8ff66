import numpy as np
import pytest
import torch

from cadence.policies.caching import BlockCache
from cadence.policies.caching.block_cache import install
from cadence.policies.caching.calibration import bac_schedule, branch_statistics, pairwise, relative_volatility

from .conftest import transformer_policy


@pytest.mark.parametrize("experts", [0, 4])
def test_statistics_cover_every_branch_and_step(experts, observations):
    policy = transformer_policy("ddpm", sample_steps=12, experts=experts)
    stats = branch_statistics(policy, observations, batch_size=4)       # 3 batches: 4 + 4 + 2
    assert set(stats.similarity) == set(policy.denoiser.branch_keys()) and stats.samples == 10
    for s in stats.similarity.values():
        assert s.shape == (12, 12) and np.allclose(np.diag(s), 1.0) and np.allclose(s, s.T, atol=1e-6)
        assert (s <= 1 + 1e-6).all() and s.min() < 0.999
    assert all(v > 0 for v in stats.volatility.values())
    assert policy.denoiser.branch_cache is None                         # the recorder is removed again


def test_statistics_are_the_mean_over_samples_whatever_the_batching(observations):
    policy = transformer_policy("ddpm", sample_steps=6)
    noise = torch.randn(10, 8, 2, generator=torch.Generator().manual_seed(0))
    whole = branch_statistics(policy, observations, batch_size=10, noise=noise)
    batched = branch_statistics(policy, observations, batch_size=3, noise=noise)
    halves = [branch_statistics(policy, {"state": observations["state"][i: i + 5]}, noise=noise[i: i + 5])
              for i in (0, 5)]
    for key in whole.similarity:
        assert np.allclose(whole.similarity[key], batched.similarity[key], atol=1e-5)
        assert np.allclose(whole.similarity[key], (halves[0].similarity[key] + halves[1].similarity[key]) / 2,
                           atol=1e-5)
        assert whole.volatility[key] == pytest.approx((halves[0].volatility[key] + halves[1].volatility[key]) / 2,
                                                      rel=1e-4)


def test_pairwise_metrics_and_volatility_follow_their_formulas():
    f = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])            # (B=1, n=3, F=2)
    cos = pairwise(f, "cosine")[0]
    assert torch.allclose(cos, torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]))
    l1 = pairwise(f, "l1")[0]
    assert l1[0, 1] == pytest.approx(-(1 + 2) / 2) and l1[0, 2] == pytest.approx(-1.0)
    mse = pairwise(f, "mse")[0]
    assert mse[0, 1] == pytest.approx(-(1 + 4) / 2, rel=1e-5)
    # pairs (0,1): 1.5, (0,2): 1.0, (1,2): 2.5 -> mean 5/3; mean |f| = 6 / 6 = 1
    assert relative_volatility(f).item() == pytest.approx(5 / 3, rel=1e-5)
    with pytest.raises(ValueError, match="metric"):
        pairwise(f, "wasserstein")


def test_bac_schedule_gives_each_branch_its_budget_before_the_union(observations):
    policy = transformer_policy("ddpm", sample_steps=12)
    stats = branch_statistics(policy, observations)
    plain = bac_schedule(stats, updates=4, bubbling_blocks=0)
    assert all(len(v) == 4 and v[0] == 0 for v in plain.update_steps.values())
    bubbled = bac_schedule(stats, updates=4, bubbling_blocks=2)
    assert len(bubbled.info["bubbled"]) == 2
    for key, steps in plain.update_steps.items():
        assert set(steps) <= set(bubbled.update_steps[key])
        if key not in bubbled.info["bubbled"]:
            assert bubbled.update_steps[key] == steps
    # its objective is never below the uniform schedule's, which the DP also considered
    assert all(plain.info["objective"][k] >= plain.info["uniform_objective"][k] - 1e-9 for k in plain.update_steps)


def test_bac_at_full_budget_reproduces_the_uncached_chunk_exactly(observations):
    policy = transformer_policy("edm", sample_steps=10, experts=4)
    noise = torch.randn(10, 8, 2, generator=torch.Generator().manual_seed(0))
    uncached = policy.predict_chunk(observations, noise=noise).actions
    schedule = bac_schedule(branch_statistics(policy, observations), updates=10, bubbling_blocks=3)
    assert all(v == list(range(10)) for v in schedule.update_steps.values())
    install(policy.denoiser, BlockCache(schedule))
    assert torch.equal(policy.predict_chunk(observations, noise=noise).actions, uncached)


def test_calibration_refuses_a_unet_policy(observations):
    from ..test_policy import make_policy
    with pytest.raises(ValueError, match="transformer"):
        branch_statistics(make_policy("ddpm"), observations)


def test_calibration_needs_observations_and_a_known_metric(observations):
    from cadence.policies.caching.schedule import ScheduleError
    policy = transformer_policy("ddpm", sample_steps=4)
    with pytest.raises(ScheduleError, match="at least one observation"):
        branch_statistics(policy, {"state": observations["state"][:0]})
    with pytest.raises(ScheduleError, match="metric"):
        branch_statistics(policy, observations, metric="wasserstein")
