"""Block caching (BAC) in the runtimes, the latency budget and the ONNX export."""
import json

import numpy as np
import pytest
import torch

from cadence.deploy.budget import Candidate, cached_steps, candidates, choose, measure
from cadence.deploy.onnx_export import export_policy_onnx
from cadence.deploy.runtimes import OnnxRuntime, TorchRuntime, build_runtime
from cadence.policies.caching import BlockCache, uniform_schedule
from cadence.policies.caching.block_cache import install
from cadence.policies.caching.schedule import ScheduleError

from ..policies.caching.conftest import transformer_policy


@pytest.fixture(scope="module")
def cached():
    """A transformer DDPM policy (12 steps) with a uniform schedule for 12 steps."""
    policy = transformer_policy("ddpm", sample_steps=12)
    install(policy.denoiser, BlockCache(uniform_schedule(policy.denoiser.branch_keys(), policy.process.levels(), 3)))
    return policy


def _inputs(b=2):
    rng = np.random.default_rng(0)
    return {"state": rng.uniform(-1, 1, (b, 2, 6)).astype(np.float32)}, rng.standard_normal((b, 8, 2)).astype(np.float32)


def test_torch_runtime_keeps_the_block_cache_unless_told_not_to(cached):
    obs, noise = _inputs()
    obs_t = {k: torch.from_numpy(v) for k, v in obs.items()}
    with_cache = cached.predict_chunk(obs_t, noise=torch.from_numpy(noise)).actions.numpy()
    saved = cached.denoiser.branch_cache
    cached.denoiser.branch_cache = None
    without = cached.predict_chunk(obs_t, noise=torch.from_numpy(noise)).actions.numpy()
    cached.denoiser.branch_cache = saved
    assert not np.allclose(with_cache, without, atol=1e-6)
    assert np.array_equal(TorchRuntime(cached).predict(obs, noise), with_cache)
    assert np.array_equal(build_runtime("torch-eager", cached, block_cache=False, device="cpu").predict(obs, noise),
                          without)
    assert cached.denoiser.branch_cache is saved                  # the runtime works on its own copy
    with pytest.raises(ScheduleError, match="no cache schedule for this sampler"):
        TorchRuntime(cached, sample_steps=5).predict(obs, noise)


def test_budget_candidates_add_the_cached_step_counts_to_torch_kinds_only(cached):
    assert cached_steps(cached) == {12: "uniform"}
    assert cached_steps(transformer_policy("ddpm")) == {}
    cands = candidates(["torch-eager", "onnx-cpu"], [12, 4], cached_steps(cached))
    assert cands == [Candidate("torch-eager", 12), Candidate("torch-eager", 4), Candidate("onnx-cpu", 12),
                     Candidate("onnx-cpu", 4), Candidate("torch-eager", 12, "uniform")]
    assert cands[-1].label == "torch-eager/12 steps + uniform"
    obs, noise = _inputs(2)      # (random weights clip some samples' actions to the same limits either way)
    obs, noise = [{"state": obs["state"][i: i + 1]} for i in range(2)], [noise[i: i + 1] for i in range(2)]
    reference = TorchRuntime(cached, block_cache=False)
    build = lambda c: TorchRuntime(cached, sample_steps=c.sample_steps, block_cache=c.cache != "none")  # noqa: E731
    measured = measure([c for c in cands if c.kind == "torch-eager"], build, reference, obs, noise, 1e9,
                       calls=2, warmup=1, progress=False)
    errors = {m.candidate: m.action_error for m in measured}
    assert errors[Candidate("torch-eager", 12)] < 1e-6 < errors[Candidate("torch-eager", 12, "uniform")]
    assert choose(measured, 1e9).candidate == Candidate("torch-eager", 12)     # the most accurate fits
    assert measured[-1].to_json()["cache"] == "uniform"


def test_onnx_export_runs_the_uncached_denoiser_and_says_so(cached, tmp_path):
    lines = []
    export_policy_onnx(cached, tmp_path / "onnx", obs_shapes={"state": (6,)}, echo=lines.append)
    spec = json.loads((tmp_path / "onnx" / "policy.json").read_text())
    assert spec["block_cache"]["applied"] is False and spec["block_cache"]["schedules"] == ["uniform M=3, 12 steps"]
    assert any("not in the ONNX graphs" in line for line in lines)
    obs, noise = _inputs()
    uncached = TorchRuntime(cached, block_cache=False).predict(obs, noise)
    np.testing.assert_allclose(OnnxRuntime(tmp_path / "onnx").predict(obs, noise), uncached, atol=1e-4)
