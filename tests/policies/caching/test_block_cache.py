import pytest
import torch

from cadence.policies.caching import BlockCache, CacheSchedule, uniform_schedule
from cadence.policies.caching.block_cache import install
from cadence.policies.caching.schedule import ScheduleError, evenly_spaced_steps, no_cache_schedule

from ..test_policy import make_policy
from .conftest import transformer_policy


def counting(policy):
    """Count how often each branch really runs (by wrapping its module's forward)."""
    calls = {}
    for i, block in enumerate(policy.denoiser.blocks):
        for name in block.branches():
            module, key = getattr(block, name), f"blocks.{i}.{name}"
            original = module.forward

            def forward(x, ctx, original=original, key=key):
                calls[key] = calls.get(key, 0) + 1
                return original(x, ctx)
            module.forward = forward
    return calls


@pytest.mark.parametrize("process", ["ddpm", "flow", "edm"])
@pytest.mark.parametrize("experts,cross", [(0, False), (4, False), (0, True)])
def test_updating_at_every_step_reproduces_the_uncached_chunk_exactly(process, experts, cross, observations):
    policy = transformer_policy(process, experts=experts, cross_attention=cross)
    noise = torch.randn(10, 8, 2, generator=torch.Generator().manual_seed(0))
    uncached = policy.predict_chunk(observations, noise=noise).actions
    keys, levels = policy.denoiser.branch_keys(), policy.process.levels()
    install(policy.denoiser, BlockCache(no_cache_schedule(keys, levels)))
    assert torch.equal(policy.predict_chunk(observations, noise=noise).actions, uncached)
    install(policy.denoiser, BlockCache(uniform_schedule(keys, levels, 4)))
    assert not torch.allclose(policy.predict_chunk(observations, noise=noise).actions, uncached, atol=1e-6)


def test_branches_run_only_at_their_update_steps(observations):
    policy = transformer_policy("ddpm", sample_steps=12)
    keys, levels = policy.denoiser.branch_keys(), policy.process.levels()
    steps = {k: [0, 6] for k in keys}
    steps["blocks.1.ffn"] = [0, 2, 4, 11]
    install(policy.denoiser, BlockCache(CacheSchedule("bac", levels, steps, 2)))
    calls = counting(policy)
    policy.predict_chunk(observations)
    policy.predict_chunk({"state": observations["state"][:1]})           # a new batch size starts afresh
    assert calls == {k: 2 * len(v) for k, v in steps.items()}


def test_each_chunk_starts_afresh_and_train_clears_the_stored_residuals(observations):
    policy = transformer_policy("ddpm")
    keys, levels = policy.denoiser.branch_keys(), policy.process.levels()
    cache = BlockCache(uniform_schedule(keys, levels, 3))
    install(policy.denoiser, cache)
    noise = torch.randn(10, 8, 2, generator=torch.Generator().manual_seed(0))
    first = policy.predict_chunk(observations, noise=noise).actions
    policy.predict_chunk({"state": observations["state"] + 1})
    assert torch.equal(policy.predict_chunk(observations, noise=noise).actions, first)
    assert cache._stored
    policy.train()
    assert not cache._stored
    loss = policy.compute_loss({**observations, "action": torch.rand(10, 8, 2)})
    assert loss.requires_grad                        # training never goes through the cache
    assert not cache._stored


def test_a_sampler_without_a_schedule_is_refused_by_name(observations):
    policy = transformer_policy("ddpm", sample_steps=12)
    keys = policy.denoiser.branch_keys()
    install(policy.denoiser, BlockCache(uniform_schedule(keys, policy.process.levels(), 3)))
    policy.process.sample_steps = 6
    with pytest.raises(ScheduleError, match=r"6 steps.*schedules for 12 steps"):
        policy.predict_chunk(observations)


def test_schedules_for_several_samplers_are_selected_by_levels(observations):
    policy = transformer_policy("ddpm", sample_steps=12)
    keys = policy.denoiser.branch_keys()
    levels12 = policy.process.levels()
    policy.process.sample_steps = 6
    levels6 = policy.process.levels()
    cache = BlockCache([uniform_schedule(keys, levels12, 3), no_cache_schedule(keys, levels6)])
    install(policy.denoiser, cache)
    noise = torch.randn(10, 8, 2, generator=torch.Generator().manual_seed(0))
    cached6 = policy.predict_chunk(observations, noise=noise).actions
    assert cache.active.sample_steps == 6
    policy.denoiser.branch_cache = None
    assert torch.equal(policy.predict_chunk(observations, noise=noise).actions, cached6)


def test_install_checks_the_network_and_its_branches():
    policy = transformer_policy("ddpm")
    levels = policy.process.levels()
    with pytest.raises(ScheduleError, match="missing"):
        install(policy.denoiser, BlockCache(uniform_schedule(["blocks.0.ffn"], levels, 2)))
    with pytest.raises(ScheduleError, match="transformer"):
        install(make_policy("ddpm").denoiser, None)


def test_schedules_validate_and_round_trip_through_json():
    levels = [90.0, 60.0, 30.0, 0.0]
    s = CacheSchedule("bac", levels, {"blocks.0.ffn": [0, 2]}, 2, {"objective": {"blocks.0.ffn": 3.5}})
    again = CacheSchedule.from_json(s.to_json())
    assert again == s and again.matches([90.0, 60.0, 30.00001, 0.0]) and not again.matches(levels[:3])
    for bad, match in [({"blocks.0.ffn": [1, 2]}, "start at step 0"), ({"blocks.0.ffn": [0, 4]}, "strictly"),
                       ({"blocks.0.ffn": [0, 2, 2]}, "strictly")]:
        with pytest.raises(ScheduleError, match=match):
            CacheSchedule("bac", levels, bad, 2)
    with pytest.raises(ScheduleError, match="budget"):
        CacheSchedule("bac", levels, {}, 5)
    with pytest.raises(ScheduleError, match="missing key 'levels'"):
        CacheSchedule.from_json({"method": "bac"}, where="x.json")
    for steps in ("abc", None, 5):
        with pytest.raises(ScheduleError, match=f"x.json: sample_steps {steps!r} but 4 levels"):
            CacheSchedule.from_json({**s.to_json(), "sample_steps": steps}, where="x.json")
    assert evenly_spaced_steps(100, 10) == list(range(0, 100, 10)) and evenly_spaced_steps(10, 3) == [0, 3, 6]
