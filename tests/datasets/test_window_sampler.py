"""Tests for cadence.datasets.window_sampler (WindowSampler).

The expected windows are built with plain python loops from the documented alignment:
observations at ``t-To+1 .. t``, actions at ``t-To+1 .. t-To+Tp``, every step outside the
episode replaced by the episode's first (before) or last (after) step.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cadence.datasets.window_sampler import WindowSampler

REPO_ROOT = Path(__file__).resolve().parents[2]
PUSHT = REPO_ROOT.parent / "shared" / "datasets" / "pusht_cchi_v7_replay.zarr"


def episode_bounds(ends):
    """[(start, end)] per episode, end exclusive."""
    bounds, start = [], 0
    for end in ends:
        bounds.append((start, end))
        start = end
    return bounds


def expected_windows(ends, to, tp, episodes=None):
    """{current step: (obs list, action list)} for every step of the chosen episodes."""
    bounds = episode_bounds(ends)
    chosen = range(len(ends)) if episodes is None else episodes
    out = {}
    for e in chosen:
        start, end = bounds[e]
        for t in range(start, end):
            obs, act = [], []
            for j in range(to):
                i = t - to + 1 + j
                if i < start:
                    i = start
                if i > end - 1:
                    i = end - 1
                obs.append(i)
            for j in range(tp):
                i = t - to + 1 + j
                if i < start:
                    i = start
                if i > end - 1:
                    i = end - 1
                act.append(i)
            out[t] = (obs, act)
    return out


def all_windows(sampler):
    obs, act = sampler.indices(np.arange(len(sampler)))
    return obs, act


def windows_by_current_step(sampler):
    """Map each sample's current step (its last observation) to its windows."""
    obs, act = all_windows(sampler)
    return {int(o[-1]): (o.tolist(), a.tolist()) for o, a in zip(obs, act)}


ENDS = [5, 12]


def test_shapes_and_dtypes():
    sampler = WindowSampler(np.array(ENDS), obs_horizon=2, pred_horizon=6)
    obs, act = sampler.indices(np.array([0, 3, 11]))
    assert obs.shape == (3, 2) and act.shape == (3, 6)
    assert np.issubdtype(obs.dtype, np.integer) and np.issubdtype(act.dtype, np.integer)


def test_every_step_is_a_current_step_exactly_once():
    sampler = WindowSampler(np.array(ENDS), obs_horizon=2, pred_horizon=6)
    assert len(sampler) == 12
    obs, _ = all_windows(sampler)
    current = obs[:, -1]
    assert sorted(current.tolist()) == list(range(12))        # each step once, none twice


def test_windows_match_loop_reference():
    sampler = WindowSampler(np.array(ENDS), obs_horizon=2, pred_horizon=6)
    assert windows_by_current_step(sampler) == expected_windows(ENDS, 2, 6)


def test_first_step_of_each_episode_repeats_it_in_the_obs_window():
    sampler = WindowSampler(np.array(ENDS), obs_horizon=2, pred_horizon=6)
    windows = windows_by_current_step(sampler)
    for start, _ in episode_bounds(ENDS):          # steps 0 and 5
        obs, act = windows[start]
        assert obs == [start, start]
        # the action chunk starts with the (padded) observed steps, then moves forward
        assert act == [start, start, start + 1, start + 2, start + 3, start + 4]


def test_action_window_near_the_end_repeats_the_last_step():
    sampler = WindowSampler(np.array(ENDS), obs_horizon=2, pred_horizon=6)
    windows = windows_by_current_step(sampler)
    # episode 0 is steps 0..4: at t=4 the chunk covers 3..8, so 5..8 become 4
    assert windows[4][1] == [3, 4, 4, 4, 4, 4]
    assert windows[3][1] == [2, 3, 4, 4, 4, 4]
    # episode 1 is steps 5..11: at t=11 the chunk covers 10..15, so 12..15 become 11
    assert windows[11][1] == [10, 11, 11, 11, 11, 11]
    assert windows[8][1] == [7, 8, 9, 10, 11, 11]


def test_windows_never_cross_episode_borders():
    ends = [5, 12, 13, 16, 30]          # includes a 1-step and a 3-step episode (shorter than Tp)
    sampler = WindowSampler(np.array(ends), obs_horizon=3, pred_horizon=8)
    obs, act = all_windows(sampler)
    bounds = episode_bounds(ends)
    for o, a in zip(obs, act):
        t = int(o[-1])
        start, end = next((s, e) for s, e in bounds if s <= t < e)
        assert all(start <= i < end for i in o), (t, o)
        assert all(start <= i < end for i in a), (t, a)
        # windows are non-decreasing in time
        assert list(o) == sorted(o) and list(a) == sorted(a)
    assert windows_by_current_step(sampler) == expected_windows(ends, 3, 8)
    # the 1-step episode (step 12): every index in its windows is 12
    o12, a12 = windows_by_current_step(sampler)[12]
    assert o12 == [12] * 3 and a12 == [12] * 8


@pytest.mark.parametrize("to, tp", [(1, 1), (1, 4), (2, 2), (2, 16), (4, 8), (3, 3)])
def test_other_horizons_match_loop_reference(to, tp):
    ends = [5, 12, 13, 20]
    sampler = WindowSampler(np.array(ends), obs_horizon=to, pred_horizon=tp)
    assert len(sampler) == 20
    got = windows_by_current_step(sampler)
    assert len(got) == 20
    assert got == expected_windows(ends, to, tp)


def test_episodes_argument_restricts_sampling():
    ends = [5, 12, 13, 20]
    only_second = WindowSampler(np.array(ends), obs_horizon=2, pred_horizon=6, episodes=np.array([1]))
    assert len(only_second) == 7
    obs, act = all_windows(only_second)
    assert sorted(obs[:, -1].tolist()) == list(range(5, 12))
    assert obs.min() >= 5 and obs.max() <= 11 and act.min() >= 5 and act.max() <= 11
    assert windows_by_current_step(only_second) == expected_windows(ends, 2, 6, episodes=[1])

    subset = WindowSampler(np.array(ends), obs_horizon=2, pred_horizon=6, episodes=np.array([3, 0]))
    assert len(subset) == 5 + 7
    assert sorted(all_windows(subset)[0][:, -1].tolist()) == list(range(0, 5)) + list(range(13, 20))
    assert windows_by_current_step(subset) == expected_windows(ends, 2, 6, episodes=[3, 0])

    none = WindowSampler(np.array(ends), obs_horizon=2, pred_horizon=6, episodes=np.array([], dtype=int))
    assert len(none) == 0


@pytest.mark.parametrize("to, tp", [(0, 4), (-1, 4), (3, 2), (2, 1), (0, 0)])
def test_invalid_horizons_raise(to, tp):
    with pytest.raises(ValueError):
        WindowSampler(np.array(ENDS), obs_horizon=to, pred_horizon=tp)


def test_pusht_episode_ends_windows_stay_inside_their_episode():
    if not PUSHT.is_dir():
        pytest.skip(f"shared PushT store not found at {PUSHT}")
    import zarr
    ends = zarr.open(str(PUSHT), mode="r")["meta/episode_ends"][:]
    sampler = WindowSampler(ends, obs_horizon=2, pred_horizon=16)
    assert len(sampler) == int(ends[-1])
    obs, act = all_windows(sampler)
    # which episode each index belongs to, computed with searchsorted on the ends
    episode_of = lambda idx: np.searchsorted(ends, idx, side="right")   # noqa: E731
    current = obs[:, -1]
    assert np.array_equal(np.sort(current), np.arange(ends[-1]))
    assert np.all(episode_of(obs) == episode_of(current)[:, None])
    assert np.all(episode_of(act) == episode_of(current)[:, None])
