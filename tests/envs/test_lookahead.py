"""Lookahead for the oracle verifier: a snapshot restored in another env of the task continues
exactly as the original; scoring plans never moves the real env; scores follow the task."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import cadence.envs  # noqa: F401
from cadence.envs.lookahead import FAILURE, SUCCESS, LookaheadError, run_branches, score_plans


def reach_env(**options):
    env = gym.make("cadence/BimodalReach-v0")
    env.reset(seed=4, options=options or None)
    return env


def pusht_env(seed=4):
    env = gym.make("cadence/PushT-v0")
    env.reset(seed=seed)
    return env


def run(env, actions):
    return [env.unwrapped.step(a)[0] for a in actions]


def equal_observations(a, b, atol=0.0):
    return all(np.allclose(x[k], y[k], rtol=0, atol=atol) for x, y in zip(a, b) for k in x)


def pusht_actions(env, n=25):
    """Actions that drive the agent into the block and push it (contacts every step)."""
    state = env.unwrapped.snapshot()
    target = np.array(state["block"][:2])
    rng = np.random.default_rng(0)
    return [target + rng.normal(0, 20, 2) for _ in range(n)]


@pytest.mark.parametrize("make,atol", [(reach_env, 0.0), (pusht_env, 0.05)], ids=["bimodal_reach", "pusht"])
def test_a_restored_snapshot_continues_as_the_original(make, atol):
    env = make()
    actions = pusht_actions(env) if make is pusht_env else [np.array([0.3, -0.2])] * 25
    run(env, actions[:8])                                  # mid-episode, moving (and pushing the block)
    copy = make()
    copy.reset(seed=99)                                    # another episode entirely
    copy.unwrapped.restore(env.unwrapped.snapshot())
    assert equal_observations(run(env, actions[8:]), run(copy, actions[8:]), atol)


def test_scoring_plans_leaves_the_real_env_where_it_was():
    env, twin, scratch = reach_env(), reach_env(), reach_env()
    before = env.unwrapped.snapshot()
    plans = np.random.default_rng(0).uniform(-1.5, 1.5, (5, 12, 2))
    score_plans(env, scratch, plans)
    after = env.unwrapped.snapshot()
    assert np.array_equal(before["physics"], after["physics"]) and before["steps"] == after["steps"]
    actions = [np.array([0.4, 0.1])] * 10
    assert equal_observations(run(env, actions), run(twin, actions))


def test_scores_success_failure_and_progress():
    goal = np.array([0.6, 1.0])
    env = reach_env(start=(0.6, 0.8), goal=goal)
    scratch = reach_env()
    plans = np.stack([np.tile(goal, (10, 1)),                       # servo onto the goal: success
                      np.tile([0.6, 0.8], (10, 1)),                 # hold: 0.2 from the goal
                      np.tile([0.0, 0.0], (10, 1))])                # into the obstacle: ends in a collision
    scores = score_plans(env, scratch, plans)
    assert scores[0] == SUCCESS and scores[2] == FAILURE
    assert scores[1] == pytest.approx(-0.2, abs=0.02)


def test_pusht_scores_are_its_reward_where_no_plan_succeeds():
    env, scratch = pusht_env(), pusht_env(seed=7)
    plans = np.stack([np.array(pusht_actions(env, 10)), np.full((10, 2), 20.0)])
    scores = score_plans(env, scratch, plans)
    for plan, score in zip(plans, scores):
        copy = pusht_env()
        run(copy, plan)
        assert score == pytest.approx(copy.unwrapped.progress(), abs=1e-3)


def test_an_env_without_snapshot_is_refused_by_name():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    with pytest.raises(LookaheadError, match="CartPoleEnv has no snapshot/restore/progress"):
        score_plans(env, env, np.zeros((1, 2, 1)))


def test_a_branch_keeps_the_wrapped_observations_and_goes_on_from_its_state():
    """run_branches steps the base env but hands back observations as the wrapped env gives them (a task
    id added by its wrapper), the last ``keep`` of them; a second plan from the branch's state ends
    where both plans run one after the other end."""
    from cadence.envs.task_id import TaskIdObservation

    env = TaskIdObservation(reach_env(), [0.0, 1.0])
    scratch = TaskIdObservation(reach_env(), [0.0, 1.0])
    first, second = np.tile([0.3, -0.6], (5, 1)), np.tile([0.5, -0.4], (4, 1))
    start = env.unwrapped.snapshot()
    (branch,) = run_branches(scratch, [start], first[None], ["state", "task_id"], keep=2)
    stepped = [env.step(a)[0] for a in first]
    assert not branch.ended and set(branch.obs) == {"state", "task_id"}
    np.testing.assert_array_equal(branch.obs["state"], np.stack([o["state"] for o in stepped[-2:]]))
    np.testing.assert_array_equal(branch.obs["task_id"], [[0.0, 1.0]] * 2)
    (then,) = run_branches(scratch, [branch.state], second[None])
    for a in second:
        env.step(a)
    assert then.score == env.unwrapped.progress() and then.obs == {}
