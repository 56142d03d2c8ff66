"""Inference-time search over start noises: K = 1 is the plain policy, candidates are the
policy's own samples, best-of keeps the verifier's argmax, zero-order never ends worse than it
started, and the built-in verifiers score what they say."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from cadence.policies.search import (CandidateSampler, SearchContext, SearchSettings, coherence, consensus,
                                     continuation, search_chunk)
from tests.deploy.onnx_cases import make_obs, make_policy


def obs_tensors(batch: int, seed: int = 1) -> dict:
    return {k: torch.from_numpy(v) for k, v in make_obs(batch, seed=seed).items()}


@pytest.fixture(scope="module")
def policy():
    return make_policy("ddpm", down_dims=[16, 32])


def target_verifier(target: float):
    """Prefers chunks whose mean action is near ``target``: independent of the other candidates."""
    return lambda chunks, context: -(chunks.mean(dim=(-2, -1)) - target).abs()


def test_one_candidate_is_the_policy_without_search_bit_for_bit(policy):
    obs = obs_tensors(2)
    plain = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3)).actions
    policy.search = SearchSettings(candidates=1, verifier="coherence")
    try:
        searched = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3)).actions
    finally:
        policy.search = None
    assert torch.equal(plain, searched)


def test_batched_candidates_equal_candidates_sampled_one_by_one(policy):
    obs = obs_tensors(2)
    noises = torch.randn(2, 4, 16, 2, generator=torch.Generator().manual_seed(0))
    batched = CandidateSampler(policy, obs, None)(noises)
    for k in range(4):
        alone = policy.predict_chunk(obs, noise=noises[:, k]).actions
        assert torch.allclose(batched[:, k], alone, atol=1e-5), k
    assert (batched[:, 0] - batched[:, 1]).abs().max() > 1e-3          # different noises, different chunks


def test_best_of_keeps_the_verifiers_argmax(policy):
    obs, k = obs_tensors(3), 6
    verifier = target_verifier(0.3)
    settings = SearchSettings(candidates=k, verifier=verifier)
    kept = search_chunk(policy, obs, settings, generator=torch.Generator().manual_seed(5))
    noises = torch.randn(3, k, 16, 2, generator=torch.Generator().manual_seed(5))   # what the search drew
    chunks = CandidateSampler(policy, obs, None)(noises)
    best = verifier(chunks, SearchContext(obs, 1)).argmax(dim=1)
    assert torch.allclose(kept, chunks[torch.arange(3), best], atol=1e-6)
    assert len(set(best.tolist())) > 1 or best[0] != 0        # the choice is made per sample, not always the first


def test_a_given_noise_is_candidate_zero_and_a_constant_verifier_keeps_it(policy):
    obs = obs_tensors(2)
    noise = torch.randn(2, 16, 2, generator=torch.Generator().manual_seed(9))
    kept = search_chunk(policy, obs, SearchSettings(candidates=5, verifier="coherence"), noise=noise)
    assert torch.allclose(kept, policy.predict_chunk(obs, noise=noise).actions, atol=1e-5)


def test_zero_order_never_ends_worse_than_its_start(policy):
    obs, verifier = obs_tensors(4), target_verifier(-0.2)
    context = SearchContext(obs, 1)
    start = search_chunk(policy, obs, SearchSettings(candidates=4, verifier=verifier),
                         generator=torch.Generator().manual_seed(2))
    searched = search_chunk(policy, obs, SearchSettings(candidates=4, method="zero_order", verifier=verifier, rounds=3),
                            generator=torch.Generator().manual_seed(2))
    before, after = verifier(start[:, None], context)[:, 0], verifier(searched[:, None], context)[:, 0]
    assert (after >= before - 1e-6).all()
    assert (after > before + 1e-6).any()                       # and it does move for some sample


def test_a_trust_region_keeps_the_verifiers_pick_among_the_candidates_closest_to_the_others(policy):
    obs, k = obs_tensors(3), 8
    outlier = lambda chunks, context: -consensus(chunks, context)      # noqa: E731 - prefers the odd one out
    noises = torch.randn(3, k, 16, 2, generator=torch.Generator().manual_seed(4))   # what the search draws
    chunks = CandidateSampler(policy, obs, None)(noises)
    agreement = consensus(chunks, SearchContext(obs, 1))
    order = agreement.argsort(dim=1, descending=True)                 # closest to the others first
    rows = torch.arange(3)
    free = search_chunk(policy, obs, SearchSettings(k, verifier=outlier), generator=torch.Generator().manual_seed(4))
    assert torch.allclose(free, chunks[rows, order[:, -1]], atol=1e-6)                # the farthest of all eight
    kept = search_chunk(policy, obs, SearchSettings(k, verifier=outlier, trust=0.5),
                        generator=torch.Generator().manual_seed(4))
    assert torch.allclose(kept, chunks[rows, order[:, 3]], atol=1e-6)                 # the farthest of the top four
    one = search_chunk(policy, obs, SearchSettings(k, verifier=outlier, trust=0.01),
                       generator=torch.Generator().manual_seed(4))
    assert torch.allclose(one, chunks[rows, order[:, 0]], atol=1e-6)                  # the medoid alone


def test_zero_order_in_a_trust_region_never_ends_worse_than_its_start(policy):
    obs, verifier = obs_tensors(4), target_verifier(-0.2)
    context = SearchContext(obs, 1)
    settings = SearchSettings(candidates=4, verifier=verifier, trust=0.5)
    start = search_chunk(policy, obs, settings, generator=torch.Generator().manual_seed(2))
    searched = search_chunk(policy, obs, replace(settings, method="zero_order", rounds=3),
                            generator=torch.Generator().manual_seed(2))
    before, after = verifier(start[:, None], context)[:, 0], verifier(searched[:, None], context)[:, 0]
    assert (after >= before - 1e-6).all()


def test_consensus_prefers_the_medoid_and_coherence_the_previous_plan():
    base = torch.zeros(1, 1, 16, 2)
    chunks = torch.cat([base + 1.0, base + 0.1, base, base - 0.1, base - 1.0], dim=1)   # (1, 5, 16, 2)
    context = SearchContext({}, start=1)
    assert consensus(chunks, context).argmax().item() == 2
    previous = torch.full((1, 8, 2), 0.95)
    assert coherence(chunks, SearchContext({}, 1, previous)).argmax().item() == 0
    assert torch.equal(coherence(chunks, context), torch.zeros(1, 5))        # no previous plan: no preference


def test_settings_and_stateful_processes_are_refused():
    for bad, match in [({"candidates": 0}, "candidates"), ({"method": "beam"}, "method"),
                       ({"verifier": "oracle9"}, "verifier"), ({"radius": 0.0}, "radius"), ({"trust": 0.0}, "trust"),
                       ({"trust": 1.5}, "trust"), ({"lookahead_chunks": -1}, "lookahead_chunks"),
                       ({"lookahead_chunks": 1, "verifier": "consensus"}, "only with the oracle")]:
        with pytest.raises(ValueError, match=match):
            SearchSettings(**bad)
    streaming = make_policy("streaming", down_dims=[16], pred_horizon=20, exec_horizon=8, sample_steps=2,
                            streaming={"start_steps": 3})
    with pytest.raises(ValueError, match="keeps state per batch row"):
        search_chunk(streaming, obs_tensors(1), SearchSettings(candidates=2))


def test_an_onnx_export_searches_on_the_host_like_the_torch_policy(tmp_path_factory):
    from cadence.deploy.exported_policy import load_exported
    from tests.deploy.onnx_cases import exported
    case = exported("ddpm", tmp_path_factory)
    onnx_policy = load_exported(case.export_dir, "cpu")
    settings = SearchSettings(candidates=4, method="zero_order", rounds=1)
    obs = obs_tensors(2)
    got = search_chunk(onnx_policy, obs, settings, generator=torch.Generator().manual_seed(4))
    want = search_chunk(case.policy, obs, settings, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(got, want, atol=1e-4)


def test_every_candidate_keeps_the_committed_prefix(policy):
    obs = obs_tensors(2)
    prefix = torch.full((2, 3, 2), 0.4)
    kept = search_chunk(policy, obs, SearchSettings(candidates=3), generator=torch.Generator().manual_seed(1),
                        prefix=prefix)
    assert torch.allclose(kept[:, 1:4], prefix, atol=1e-5)


def test_the_oracle_scores_the_plans_from_start_given_by_the_rollout(policy):
    obs, seen = obs_tensors(2), []

    def lookahead(plans):              # stands in for the rollout's copies of the simulator: last action's x
        seen.append(plans)
        return plans[:, :, -1, 0]

    settings = SearchSettings(candidates=5, verifier="oracle")
    assert settings.uses_lookahead and not SearchSettings(candidates=1, verifier="oracle").uses_lookahead
    kept = search_chunk(policy, obs, settings, generator=torch.Generator().manual_seed(3), lookahead=lookahead)
    (plans,) = seen
    assert plans.shape == (2, 5, 16 - 1, 2)                     # from start = To - 1 to the chunk's end
    assert torch.allclose(kept[:, 1:], torch.from_numpy(plans[[0, 1], plans[:, :, -1, 0].argmax(axis=1)]))
    with pytest.raises(ValueError, match="simulated rollout"):
        search_chunk(policy, obs, settings)


def test_an_anchor_policy_searches_every_mode_of_every_noise_and_confidence_keeps_the_top_logit():
    anchor = make_policy("anchor", network="anchor_decoder",
                         anchor={"num_anchors": 5, "d_model": 16, "n_heads": 2, "cond_tokens": 2, "ffn_mult": 2})
    obs, seen = obs_tensors(2), []
    recorder = lambda chunks, context: seen.append((chunks, context.confidence)) or chunks.new_zeros(chunks.shape[:2])  # noqa: E731
    search_chunk(anchor, obs, SearchSettings(candidates=3, verifier=recorder), generator=torch.Generator().manual_seed(0))
    (chunks, logits), = seen
    assert chunks.shape == (2, 3 * 5, 16, 2) and logits.shape == (2, 15)    # K noises x M anchors
    kept = search_chunk(anchor, obs, SearchSettings(candidates=3, verifier="confidence"),
                        generator=torch.Generator().manual_seed(0))
    assert torch.allclose(kept, chunks[torch.arange(2), logits.argmax(dim=1)], atol=1e-6)
    # noise 0's modes are candidates 0..4: the plain policy keeps its most confident one
    first = torch.randn(2, 3, 16, 2, generator=torch.Generator().manual_seed(0))[:, 0]     # what the search drew
    plain = anchor.predict_chunk(obs, noise=first).actions
    assert torch.allclose(plain, chunks[torch.arange(2), logits[:, :5].argmax(dim=1)], atol=1e-5)
    with pytest.raises(ValueError, match="anchor policy's own mode logits"):
        search_chunk(make_policy("ddpm", down_dims=[16, 32]), obs, SearchSettings(candidates=2, verifier="confidence"))


def test_an_oracle_that_looks_further_continues_each_candidate_with_the_policys_own_chunks(policy):
    """lookahead_chunks=M: the rollout's lookahead gets M and a continuation that samples the policy
    without search (predict_chunk's sample for the same noise), the candidates of one observation from
    the same start noise."""
    obs, calls = obs_tensors(2), []

    def lookahead(plans, continue_with=None, chunks=0):
        calls.append((continue_with, chunks))
        return plans[:, :, -1, 0]

    settings = SearchSettings(candidates=3, verifier="oracle", lookahead_chunks=2)
    search_chunk(policy, obs, settings, generator=torch.Generator().manual_seed(3), lookahead=lookahead)
    ((given, chunks),) = calls
    assert chunks == 2 and callable(given)
    follow = continuation(policy, torch.Generator().manual_seed(7))
    rows = {k: v[[0, 0, 1]] for k, v in obs.items()}              # two candidates of observation 0, one of 1
    got = follow(rows, np.array([0, 0, 1])).actions
    noise = torch.randn(2, policy.pred_horizon, policy.action_dim, generator=torch.Generator().manual_seed(7))[[0, 0, 1]]
    policy.search = settings                                        # the continuation never searches
    try:
        assert torch.equal(got, policy.sample_chunk(rows, noise=noise).actions)
    finally:
        policy.search = None
    assert torch.equal(got, policy.predict_chunk(rows, noise=noise).actions)
    assert torch.equal(got[0], got[1]) and not torch.allclose(got[0], got[2])
