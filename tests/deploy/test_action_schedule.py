"""Stamped actions: nothing past its time is executed; chunks meet at the seam as configured."""
import numpy as np
import pytest

from cadence.deploy.action_schedule import ActionSchedule

P = 0.1


def chunk(n=15, offset=0.0, da=2):
    return np.stack([np.full(da, offset + j, dtype=np.float32) for j in range(n)])


def test_take_returns_the_action_for_the_next_robot_step():
    s = ActionSchedule(P)
    s.merge(chunk(), first_due=1.0, chunk=1, now=1.0)
    a = s.take(1.03)                          # robot stepped at 1.0; its next step is at 1.1
    assert a.due == pytest.approx(1.1) and a.value[0] == 1.0 and a.chunk == 1
    assert s.take(1.13).value[0] == 2.0
    assert s.remaining(1.13) == 12


def test_actions_already_past_on_arrival_are_dropped_and_counted():
    s = ActionSchedule(P)
    stale = s.merge(chunk(), first_due=1.0, chunk=1, now=1.25)   # 150 ms late: slots 1.0, 1.1, 1.2 passed
    assert stale == 3 and s.stale_dropped == 3
    assert s.take(1.25).due == pytest.approx(1.3)


@pytest.mark.parametrize("seed", range(5))
def test_no_executed_action_is_ever_past_its_time(seed):
    """Simulated clock, random inference latencies, tick jitter and arrival times."""
    rng = np.random.default_rng(seed)
    s = ActionSchedule(P, lead=0.01)
    t_obs, pending, executed, chunk_id = 0.0, [], [], 0
    for k in range(400):
        now = 0.03 + k * P + rng.uniform(0, 0.004)            # ticks with jitter
        while pending and pending[0][0] <= now:
            _, first_due, actions, cid = pending.pop(0)
            s.merge(actions, first_due, cid, now)
        if k % 6 == 0:                                          # replan from the newest observation
            chunk_id += 1
            t_obs = np.floor(now / P) * P
            pending.append((now + rng.uniform(0.0, 0.45), t_obs, chunk(15, 100 * chunk_id), chunk_id))
            pending.sort(key=lambda p: p[0])
        a = s.take(now)
        if a is not None:
            executed.append((now, a.due))
    assert executed, "nothing ran"
    dues = np.array([d for _, d in executed])
    nows = np.array([n for n, _ in executed])
    assert np.all(dues >= nows + 0.01 - 1e-9)                   # never past its time (with the lead)
    assert np.all(dues < nows + 0.01 + P + 1e-9)                # and never ahead of the next step
    assert len(set(np.round(dues, 6))) == len(dues)             # each slot at most once


def test_a_late_tick_sends_the_next_step_once_and_the_tick_after_it_leaves_it_alone():
    """A tick 90 ms late already serves the next step; the on-time tick after it maps to the same
    step: it must neither run that slot again (even when a new chunk re-covers it) nor hold."""
    s = ActionSchedule(P)
    s.merge(chunk(15, 0.0), first_due=1.0, chunk=1, now=1.0)
    assert s.take(1.025).due == pytest.approx(1.1)
    late = s.take(1.115 + 0.09)                  # the tick due at 1.125 runs at 1.215
    assert late.due == pytest.approx(1.3) and late.value[0] == 3.0
    s.merge(chunk(15, 50.0), first_due=1.2, chunk=2, now=1.225)      # re-covers 1.3 onwards
    assert s.take(1.225) is None and s.already_sent(1.225)            # 1.3 went out already
    nxt = s.take(1.325)
    assert nxt.due == pytest.approx(1.4) and nxt.value[0] == 52.0 and not s.already_sent(1.425)
    assert s.committed(1.3, 2)[:, 0].tolist() == [3.0, 52.0]          # what ran, then what is due


@pytest.mark.parametrize("seed", range(5))
def test_late_ticks_never_run_a_slot_twice(seed):
    rng = np.random.default_rng(seed)
    s = ActionSchedule(P)
    dues, sent, chunk_id = [], 0, 0
    for k in range(300):
        now = 0.025 + k * P + (rng.uniform(0.5, 0.95) * P if rng.random() < 0.2 else 0.0)
        if k % 4 == 0:
            chunk_id += 1
            s.merge(chunk(15, 100 * chunk_id), np.floor(now / P) * P, chunk_id, now)
        a = s.take(now)
        if a is not None:
            dues.append(a.due)
        elif s.already_sent(now):
            sent += 1
    assert sent > 0 and len(set(np.round(dues, 6))) == len(dues)


def test_replace_takes_the_newest_chunk_at_the_seam():
    s = ActionSchedule(P)
    s.merge(chunk(15, 0.0), 1.0, 1, now=1.0)
    s.merge(chunk(15, 50.0), 1.2, 2, now=1.21)                  # overlaps from 1.2 on
    assert s.take(1.03).value[0] == 1.0                          # before the seam: old chunk
    a = s.take(1.23)                                             # slot 1.3 = new chunk's j=1
    assert a.chunk == 2 and a.value[0] == 51.0


def test_temporal_ensembling_weights_older_predictions_by_exp_decay():
    s = ActionSchedule(P, blend="ensemble", ensemble_decay=0.5)
    s.merge(chunk(15, 0.0), 1.0, 1, now=1.0)
    s.merge(chunk(15, 10.0), 1.0, 2, now=1.0)
    a = s.take(1.03)                                             # slot 1.1: predictions 1.0 and 11.0
    w = np.exp(-0.5 * np.arange(2))
    assert a.value[0] == pytest.approx((w[0] * 1.0 + w[1] * 11.0) / w.sum(), rel=1e-6)


def test_committed_reports_what_ran_and_what_is_scheduled():
    s = ActionSchedule(P)
    s.merge(chunk(15, 0.0), 1.0, 1, now=1.0)
    s.take(1.03)                                                 # slot 1.1 executed
    got = s.committed(1.1, 3)                                     # 1.1 (ran), 1.2, 1.3 (scheduled)
    np.testing.assert_array_equal(got[:, 0], [1.0, 2.0, 3.0])
    assert s.committed(5.0, 3) is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="blend"):
        ActionSchedule(P, blend="average")
    with pytest.raises(ValueError, match="period"):
        ActionSchedule(0.0)
