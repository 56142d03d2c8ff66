"""Budget selection: the most accurate configuration whose p99 fits; a clear refusal otherwise."""
import numpy as np
import pytest

from cadence.deploy.budget import BudgetError, Candidate, choose, measure
from cadence.deploy.runtimes import TorchRuntime

from ..policies.test_policy import make_policy


@pytest.fixture(scope="module")
def measured():
    policy = make_policy("ddpm", sample_steps=10)
    rng = np.random.default_rng(0)
    obs = [{"state": rng.uniform(-1, 1, (1, 2, 6)).astype(np.float32)} for _ in range(3)]
    noises = [rng.standard_normal((1, 16, 2)).astype(np.float32) for _ in obs]
    reference = TorchRuntime(policy, sample_steps=100)
    candidates = [Candidate("torch-eager", s) for s in (100, 20, 2)]
    build = lambda c: TorchRuntime(policy, sample_steps=c.sample_steps)  # noqa: E731
    return measure(candidates, build, reference, obs, noises, budget_ms=1e9, calls=5, warmup=1, progress=False)


def test_measurements_rank_accuracy_and_latency(measured):
    by_steps = {m.candidate.sample_steps: m for m in measured}
    assert by_steps[100].action_error < 1e-6                   # the reference configuration itself
    assert by_steps[2].action_error > by_steps[20].action_error > 0
    assert by_steps[100].p50_ms > by_steps[2].p50_ms            # 50x the denoiser calls
    assert all(m.p99_ms >= m.p50_ms and len(m.times_ms) == 5 for m in measured)


def test_choose_takes_the_most_accurate_that_fits(measured):
    by_steps = {m.candidate.sample_steps: m for m in measured}
    assert choose(measured, 1e9) is by_steps[100]
    between = (by_steps[100].p99_ms + max(by_steps[20].p99_ms, by_steps[2].p99_ms)) / 2
    if by_steps[20].p99_ms < by_steps[100].p99_ms:               # timing on a shared CPU: compare what was measured
        assert choose(measured, between) is by_steps[20]


def test_equally_accurate_candidates_go_to_the_fastest(measured):
    import dataclasses

    by_steps = {m.candidate.sample_steps: m for m in measured}
    # the reference's twin on another runtime: the same actions to float rounding, a tenth of the time
    twin = dataclasses.replace(by_steps[100], action_error=by_steps[100].action_error + 1e-7,
                               p50_ms=by_steps[100].p50_ms / 10, p99_ms=by_steps[100].p99_ms / 10)
    assert choose([*measured, twin], 1e9) is by_steps[100]                # no tie allowed: the exact one
    assert choose([*measured, twin], 1e9, tie=1e-4) is twin               # equally accurate: the fastest
    assert choose(measured, 1e9, tie=1e-4) is by_steps[100]               # fewer steps are not "equal"


def test_refuses_when_nothing_fits_and_says_what_was_measured(measured):
    with pytest.raises(BudgetError) as err:
        choose(measured, 1e-3)
    text = str(err.value)
    assert "0.001 ms" in text and "torch-eager/2 steps" in text and "torch-eager/100 steps" in text


def test_anchor_step_candidates_stay_within_the_truncated_schedule():
    from omegaconf import OmegaConf

    from cadence.config import PolicyConfig
    from cadence.deploy.budget import candidate_steps, reference_steps
    from cadence.policies.factory import build_process

    cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig),
                          {"process": "anchor", "network": "anchor_decoder", "sample_steps": 2})
    assert candidate_steps(build_process(cfg, 2), None) == [4, 2, 1] and reference_steps(build_process(cfg, 2), None) == 1
    cfg.anchor.trunc_steps = 3                  # timesteps 2, 1, 0: at most three steps
    assert candidate_steps(build_process(cfg, 2), None) == [2, 1]
    assert candidate_steps(build_process(cfg, 2), [8, 3, 1]) == [3, 1]


def test_streaming_candidates_are_calls_per_replan_within_a_band():
    from omegaconf import OmegaConf

    from cadence.config import PolicyConfig
    from cadence.deploy.budget import candidate_steps, reference_steps
    from cadence.policies.factory import build_process

    cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig),
                          {"process": "streaming", "pred_horizon": 20, "exec_horizon": 8, "sample_steps": 2})
    process = build_process(cfg)
    assert candidate_steps(process, None) == [10, 5, 2, 1] and reference_steps(process, None) == 50   # 2 chunks of 50
    cfg.diffusion_steps = 8                                   # bands of 4 timesteps
    process = build_process(cfg)
    assert candidate_steps(process, None) == [2, 1] and reference_steps(process, None) == 4


def test_stateful_runtimes_are_compared_from_a_fresh_start():
    policy = make_policy("streaming", pred_horizon=20, exec_horizon=8, sample_steps=2, streaming={"start_steps": 2})
    rng = np.random.default_rng(0)
    obs = [{"state": rng.uniform(-1, 1, (1, 2, 6)).astype(np.float32)} for _ in range(2)]
    noises = [rng.standard_normal((1, 20, 2)).astype(np.float32) for _ in obs]
    build = lambda c: TorchRuntime(policy, sample_steps=c.sample_steps, seed=0)  # noqa: E731
    reference = TorchRuntime(policy, sample_steps=2, seed=0)
    (same,) = measure([Candidate("torch-eager", 2)], build, reference, obs, noises, budget_ms=1e9, calls=3, warmup=1,
                      progress=False)
    assert same.action_error == 0.0          # although the candidate rolled its buffer while being timed


def test_the_budget_searches_the_most_candidates_that_fit_with_the_accuracy_of_its_single_twin():
    from cadence.deploy.budget import candidates
    from cadence.policies.search import SearchSettings

    listed = candidates(["torch-eager"], [10, 2], search=[1, 8])
    assert [(c.sample_steps, c.candidates) for c in listed] == [(10, 1), (2, 1), (10, 8), (2, 8)]
    assert listed[2].label == "torch-eager/10 steps x8" and listed[2].single == listed[0]

    policy = make_policy("ddpm", sample_steps=10)
    rng = np.random.default_rng(0)
    obs = [{"state": rng.uniform(-1, 1, (1, 2, 6)).astype(np.float32)} for _ in range(2)]
    noises = [rng.standard_normal((1, 16, 2)).astype(np.float32) for _ in obs]

    def build(c):
        runtime = TorchRuntime(policy, sample_steps=c.sample_steps)
        if c.candidates > 1:
            runtime.policy.search = SearchSettings(c.candidates, "best_of", "consensus")
        return runtime

    measured = measure(listed, build, TorchRuntime(policy, sample_steps=100), obs, noises, budget_ms=1e9,
                       calls=5, warmup=1, progress=False)
    single, searched = measured[0], measured[2]
    assert searched.action_error == single.action_error          # the reference is unchanged: its twin's error
    assert searched.p50_ms > single.p50_ms                       # eight chunks cost more than one
    assert choose(measured, 1e9).candidate == listed[2]          # the most accurate, then the most candidates
    between = (single.p99_ms + searched.p99_ms) / 2
    if single.p99_ms < between < searched.p99_ms:                 # timing on a shared CPU: compare what was measured
        assert choose(measured, between).candidate == listed[0]
    assert measured[2].to_json()["candidates"] == 8


def test_a_run_never_searches_with_the_oracle(tmp_path):
    from omegaconf import OmegaConf

    from cadence.robot_schema import BudgetConfig
    from cadence.policies.value_verifier import VerifierError
    from cadence.run import deployable_verifier

    budget = OmegaConf.structured(BudgetConfig(candidates=[1, 4], verifier="oracle"))
    with pytest.raises(VerifierError, match="not deployable"):
        deployable_verifier(budget, tmp_path / "checkpoint")
    budget.verifier = "consensus"
    assert deployable_verifier(budget, tmp_path / "checkpoint") == "consensus"
    budget.candidates = [1]
    budget.verifier = "oracle"
    assert deployable_verifier(budget, tmp_path / "checkpoint") is None       # no search: nothing to verify
