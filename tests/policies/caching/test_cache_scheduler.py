import itertools

import numpy as np
import pytest

from cadence.policies.caching.cache_scheduler import optimal_update_steps, schedule_value, segment_costs


def brute_force(similarity, updates):
    n = similarity.shape[0]
    return max(schedule_value(similarity, [0, *rest]) for rest in itertools.combinations(range(1, n), updates - 1))


def random_similarity(rng, n):
    f = rng.normal(size=(n, 5)) + np.linspace(0, 3, n)[:, None] * rng.normal(size=5)
    unit = f / np.linalg.norm(f, axis=1, keepdims=True)
    return unit @ unit.T


def test_dynamic_program_equals_brute_force_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 10))
        s = random_similarity(rng, n) if rng.random() < 0.5 else rng.normal(size=(n, n))   # also asymmetric
        for m in range(1, n + 1):
            steps = optimal_update_steps(s, m)
            assert steps[0] == 0 and len(steps) == m and steps == sorted(set(steps)) and steps[-1] < n
            assert schedule_value(s, steps) == pytest.approx(brute_force(s, m), abs=1e-9)


def test_segment_costs_and_objective_follow_their_formulas():
    s = np.arange(16, dtype=float).reshape(4, 4)
    cost = segment_costs(s)
    assert cost[1, 3] == s[1, 1] + s[1, 2] + s[1, 3] and cost[0, 0] == s[0, 0] and cost[2, 1] == -np.inf
    # steps 0 and 2: segment [0, 1] reuses step 0, segment [2, 3] reuses step 2
    assert schedule_value(s, [0, 2]) == s[0, 0] + s[0, 1] + s[2, 2] + s[2, 3]


def test_all_steps_or_one_step():
    s = random_similarity(np.random.default_rng(1), 6)
    assert optimal_update_steps(s, 6) == list(range(6))
    assert optimal_update_steps(s, 1) == [0]


def test_it_updates_where_the_features_change():
    # two regimes: steps 0-4 alike, 5-9 alike, dissimilar across: 2 updates must be 0 and 5
    s = np.full((10, 10), -1.0)
    s[:5, :5] = s[5:, 5:] = 1.0
    assert optimal_update_steps(s, 2) == [0, 5]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="square"):
        optimal_update_steps(np.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="1..3"):
        optimal_update_steps(np.ones((3, 3)), 4)
    with pytest.raises(ValueError, match="non-finite"):
        optimal_update_steps(np.full((3, 3), np.nan), 2)
