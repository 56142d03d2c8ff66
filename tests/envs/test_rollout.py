"""rollout(): lockstep vector rollouts with receding-horizon chunk execution, on the real task."""
from __future__ import annotations

import json
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch

import cadence.envs  # noqa: F401
from cadence.policies.action_chunk import ActionChunk
from cadence.envs.bimodal_reach import OBSTACLE_RADIUS, AGENT_RADIUS
from cadence.envs.bimodal_reach_expert import SERVO_LAG, SIDE_X, TURN_Y
from cadence.envs.rollout import RolloutResult, rollout, vector_env

TO, TA, TP = 2, 8, 16
SPEED = 0.45  # m/s of the carrot
DT = 0.1
SEEDS = list(range(8))


def make_env(**kwargs):
    return gym.make("cadence/BimodalReach-v0", **kwargs)


def _along(points: np.ndarray, s: float) -> np.ndarray:
    """The point at arc length ``s`` along a polyline (clamped at its end)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s = min(s, cum[-1])
    i = min(int(np.searchsorted(cum, s, side="right")) - 1, len(points) - 2)
    u = (s - cum[i]) / max(seg[i], 1e-9)
    return points[i] + u * (points[i + 1] - points[i])


class CarrotPolicy:
    """A closed-loop version of the scripted expert: at each replan it lays the expert's
    polyline (sideways to the lane, up the lane, diagonal to the goal) from the agent's latest
    position and returns the carrot ``SPEED * dt`` further along it per future step. The side
    is left when the goal's x < 0, else right; ``side="straight"`` drives straight up at x = 0.
    Records what it was fed."""

    def __init__(self, side: str | None = None):
        self.side = side
        self.batch_sizes: list[int] = []
        self.seen: list[dict[str, torch.Tensor]] = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def _path(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        if self.side == "straight":
            return np.array([pos, (0.0, pos[1]), (0.0, goal[1])])
        sign = -1.0 if goal[0] < 0 else 1.0
        if pos[1] < TURN_Y:
            return np.array([pos, (sign * SIDE_X, pos[1]), (sign * SIDE_X, TURN_Y), goal])
        return np.array([pos, goal])

    def predict_chunk(self, obs: dict[str, torch.Tensor]) -> ActionChunk:
        state = obs["state"]
        self.batch_sizes.append(state.shape[0])
        self.seen.append({k: v.clone() for k, v in obs.items()})
        latest = state[:, -1].numpy().astype(float)
        actions = np.zeros((state.shape[0], TP, 2), np.float32)
        for b, s in enumerate(latest):
            pos, goal = s[:2], s[4:6]
            path = self._path(pos, goal)
            actions[b, : TO - 1] = pos  # the past part of the chunk
            for k in range(TP - TO + 1):
                actions[b, TO - 1 + k] = _along(path, SPEED * (k + 1) * DT + SPEED * SERVO_LAG)
        return ActionChunk(torch.from_numpy(actions), start=TO - 1)


def _run(policy, seeds=SEEDS, make_env=make_env, **kwargs):
    return rollout(policy, make_env, seeds, obs_horizon=TO, exec_horizon=TA,
                   obs_keys=["state"], progress=False, **kwargs)


@pytest.fixture(scope="module")
def expert_run():
    policy = CarrotPolicy()
    return policy, _run(policy)


def test_expert_policy_succeeds_with_the_goal_side_rule(expert_run):
    policy, result = expert_run
    assert isinstance(result, RolloutResult)
    assert result.seeds == SEEDS
    assert policy.resets == 1
    assert result.success.dtype == bool and result.success.shape == (len(SEEDS),)
    assert result.success.all(), result.modes
    goals_x = np.array([s[0, 4] for s in result.states])
    assert (goals_x < 0).any() and (goals_x >= 0).any()  # both sides are exercised
    expected = ["left" if gx < 0 else "right" for gx in goals_x]
    assert result.modes == expected
    np.testing.assert_array_equal(result.returns, 1.0)
    # each episode's goal is its seed's: the initial states match single-env resets
    for seed, states in zip(SEEDS, result.states):
        env = make_env()
        try:
            np.testing.assert_array_equal(env.reset(seed=seed)[0]["state"], states[0])
        finally:
            env.close()


def test_lengths_and_states_are_consistent(expert_run):
    _, result = expert_run
    assert result.lengths.dtype.kind == "i"
    assert len(result.states) == len(SEEDS)
    for length, states in zip(result.lengths, result.states):
        assert states.shape == (length + 1, 6)
        assert states.dtype == np.float32
        # the last state is the terminal one: at the goal, not an auto-reset start
        assert np.linalg.norm(states[-1, :2] - states[-1, 4:6]) < 0.1
        assert np.linalg.norm(states[-2, :2] - states[-2, 4:6]) >= 0.1
        # the goal never changes within an episode (no reset leaked into it)
        np.testing.assert_array_equal(states[:, 4:6], np.broadcast_to(states[0, 4:6], (length + 1, 2)))
    assert len(set(result.lengths.tolist())) > 1  # episodes end at different steps
    assert result.frames == []


def test_finished_envs_are_not_fed_to_the_policy(expert_run):
    policy, result = expert_run
    sizes = policy.batch_sizes
    assert sizes[0] == len(SEEDS)
    assert all(a >= b for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[-1] < len(SEEDS)
    # one replan per TA steps of the longest episode
    assert len(sizes) == -(-int(result.lengths.max()) // TA)
    for call, (size, obs) in enumerate(zip(sizes, policy.seen)):
        assert set(obs) == {"state"}
        assert obs["state"].shape == (size, TO, 6) and obs["state"].dtype == torch.float32
        # the rows are the envs still running at this replan, in order, and each row holds the
        # last TO states of its episode (the reset one repeated at the start)
        t = call * TA
        running = [i for i in range(len(SEEDS)) if result.lengths[i] > t]
        assert len(running) == size
        for row, i in enumerate(running):
            window = [result.states[i][max(t - TO + 1 + j, 0)] for j in range(TO)]
            np.testing.assert_array_equal(obs["state"][row].numpy(), np.stack(window))


def test_rollout_is_deterministic(expert_run):
    _, first = expert_run
    second = _run(CarrotPolicy())
    np.testing.assert_array_equal(first.success, second.success)
    np.testing.assert_array_equal(first.lengths, second.lengths)
    np.testing.assert_array_equal(first.returns, second.returns)
    assert first.modes == second.modes
    for a, b in zip(first.states, second.states):
        np.testing.assert_array_equal(a, b)


def test_summary_matches_the_arrays(expert_run):
    _, result = expert_run
    summary = result.summary()
    json.dumps(summary)  # JSON-able
    assert summary["n_episodes"] == len(SEEDS)
    assert summary["success_rate"] == pytest.approx(result.success.mean()) == 1.0
    assert summary["mean_return"] == pytest.approx(result.returns.mean())
    assert summary["mean_length"] == pytest.approx(result.lengths.mean())
    n_left = result.modes.count("left")
    assert summary["mode_counts"] == {"left": n_left, "right": len(SEEDS) - n_left}
    assert summary["mode_shares"]["left"] == pytest.approx(n_left / len(SEEDS))
    assert summary["mode_shares"]["right"] == pytest.approx(1 - n_left / len(SEEDS))

    mixed = RolloutResult(seeds=[0, 1, 2, 3], success=np.array([True, True, True, False]),
                          returns=np.array([1.0, 1.0, 1.0, 0.0]), lengths=np.array([5, 6, 7, 9]),
                          modes=["left", "right", "right", "left"], states=[], frames=[])
    s = mixed.summary()
    assert s["success_rate"] == 0.75 and s["mean_length"] == 6.75
    assert s["mode_shares"] == {"left": pytest.approx(1 / 3), "right": pytest.approx(2 / 3)}
    failed = RolloutResult(seeds=[0], success=np.array([False]), returns=np.array([0.0]),
                           lengths=np.array([3]), modes=["none"])
    assert failed.summary()["mode_shares"] == {} and failed.summary()["success_rate"] == 0.0


def test_driving_straight_up_collides():
    policy = CarrotPolicy(side="straight")
    result = _run(policy, seeds=SEEDS[:4])
    assert not result.success.any()
    assert result.summary()["success_rate"] == 0.0
    np.testing.assert_array_equal(result.returns, 0.0)
    for length, states in zip(result.lengths, result.states):
        assert length < 120  # ended early by the collision, not by truncation
        final = states[-1, :2]
        assert np.linalg.norm(final) < OBSTACLE_RADIUS + AGENT_RADIUS + 0.02
        assert final[1] < 0  # stopped below the obstacle


def test_image_observations_are_fed_as_uint8():
    policy = CarrotPolicy()
    result = rollout(policy, partial(make_env, image_size=16, max_steps=10), [0, 1],
                     obs_horizon=TO, exec_horizon=4, obs_keys=["state", "image"],
                     progress=False)
    assert result.lengths.tolist() == [10, 10]  # truncated, both ran the full time
    assert len(policy.seen) == 3  # steps 0, 4, 8
    for obs in policy.seen:
        assert obs["image"].dtype == torch.uint8 and obs["image"].shape == (2, TO, 16, 16, 3)
        assert obs["state"].dtype == torch.float32
    first = policy.seen[0]["image"]
    torch.testing.assert_close(first[:, 0], first[:, 1])  # padded with the reset image


def test_video_needs_rgb_array_render_mode():
    with pytest.raises(RuntimeError, match="render_mode='rgb_array'"):
        _run(CarrotPolicy(), seeds=[0], video_episodes=1)


class _PushTHold:
    """Keeps the PushT agent where it starts: every action is the latest agent position."""

    def predict_chunk(self, obs):
        pos = obs["agent_pos"][:, -1:].float()
        return ActionChunk(actions=pos.expand(-1, TP, -1).clone(), start=TO - 1)


def test_max_reward_and_final_info_metrics_on_pusht():
    seeds = [100_000, 100_001]
    result = rollout(_PushTHold(), partial(gym.make, "cadence/PushT-v0"), seeds, TO, TA,
                     ["agent_pos"], progress=False, info_metrics=["coverage", "absent"])
    for i, seed in enumerate(seeds):   # the same episode stepped by hand
        env = gym.make("cadence/PushT-v0")
        obs, _ = env.reset(seed=seed)
        hold, rewards = obs["agent_pos"].copy(), []
        for _ in range(300):
            _, reward, _, _, info = env.step(hold)
            rewards.append(reward)
        assert result.final_info["coverage"][i] == pytest.approx(info["coverage"], abs=1e-9)
        assert result.max_rewards[i] == pytest.approx(max(rewards), abs=1e-9)
        assert result.lengths[i] == 300 and not result.success[i]
    assert np.isnan(result.final_info["absent"]).all()
    summary = result.summary()
    assert summary["mean_final_coverage"] == pytest.approx(result.final_info["coverage"].mean())
    assert summary["mean_max_reward"] == pytest.approx(result.max_rewards.mean())


class RowTrackingPolicy(CarrotPolicy):
    """The carrot expert with per-row state, as a streaming policy keeps: each row remembers the
    goal it first saw, and ``keep_rows`` must keep every row with its own episode."""

    def __init__(self):
        super().__init__()
        self.goals = None
        self.kept: list[list[int]] = []

    def keep_rows(self, rows):
        self.kept.append(list(rows))
        self.goals = self.goals[np.asarray(rows)]

    def predict_chunk(self, obs):
        goals = obs["state"][:, -1, 4:6].numpy()
        if self.goals is None:
            self.goals = goals.copy()
        assert self.goals.shape == goals.shape and np.allclose(self.goals, goals), "a row lost its episode"
        return super().predict_chunk(obs)


def test_stateful_policies_are_told_which_rows_keep_running():
    policy = RowTrackingPolicy()
    result = _run(policy)
    assert result.success.all()
    lengths = np.asarray(result.lengths)
    assert len(set(lengths.tolist())) > 1 and policy.kept                   # episodes ended at different times
    assert policy.batch_sizes == sorted(policy.batch_sizes, reverse=True) and policy.batch_sizes[-1] < len(SEEDS)


def _same_episodes(a, b):
    assert a.seeds == b.seeds and a.modes == b.modes and a.lengths.tolist() == b.lengths.tolist()
    for x, y in zip(a.states, b.states):
        np.testing.assert_array_equal(x, y)
    assert len(a.frames) == len(b.frames)
    for x, y in zip(a.frames, b.frames):
        np.testing.assert_array_equal(x, y)


def test_async_workers_give_the_same_episodes_and_video_as_this_process():
    seeds = SEEDS[:4]
    here = _run(CarrotPolicy(), seeds=seeds, video_episodes=2,
                make_env=partial(make_env, render_mode="rgb_array", render_size=32))
    workers = _run(CarrotPolicy(), seeds=seeds, video_episodes=2, async_envs=True,
                   make_env=partial(make_env, render_mode="rgb_array", render_size=32))
    assert here.success.all() and len(here.frames) == max(here.lengths[:2]) + 1
    _same_episodes(here, workers)


def test_one_worker_pool_runs_several_waves_like_fresh_envs():
    filmable = partial(make_env, render_mode="rgb_array", render_size=32)
    envs = vector_env(filmable, 4, n_video=2, async_envs=True)
    try:
        first, second = CarrotPolicy(), CarrotPolicy()
        waves = [_run(first, seeds=SEEDS[:4], video_episodes=2, envs=envs),
                 _run(second, seeds=SEEDS[4:7], video_episodes=1, envs=envs)]   # one spare env, one film
        with pytest.raises(ValueError, match="5 seeds need at least 5 envs"):
            _run(CarrotPolicy(), seeds=SEEDS[:5], envs=envs)
        assert envs.call("frame")[1] is None                              # filming ended with the episodes
    finally:
        envs.close()
    _same_episodes(waves[0], _run(CarrotPolicy(), seeds=SEEDS[:4], video_episodes=2, make_env=filmable))
    _same_episodes(waves[1], _run(CarrotPolicy(), seeds=SEEDS[4:7], video_episodes=1, make_env=filmable))
    assert second.batch_sizes[0] == 3 and len(waves[1].success) == 3      # the spare env's episode is not counted


def test_concatenated_waves_are_the_episodes_of_one_rollout():
    whole = _run(CarrotPolicy(), seeds=SEEDS[:5])
    parts = RolloutResult.concat([_run(CarrotPolicy(), seeds=SEEDS[:2]), _run(CarrotPolicy(), seeds=SEEDS[2:5])])
    assert parts.seeds == whole.seeds and parts.modes == whole.modes
    for key in ("success", "returns", "lengths", "max_rewards"):
        np.testing.assert_array_equal(getattr(parts, key), getattr(whole, key))
    for a, b in zip(parts.states, whole.states):
        np.testing.assert_array_equal(a, b)
    assert parts.summary() == whole.summary()
    with pytest.raises(ValueError, match="nothing"):
        RolloutResult.concat([])


def test_oracle_search_scores_candidates_in_copies_of_each_running_env():
    """A random-weight policy crashes into the obstacle within a few steps; searching 8 start
    noises with the oracle (each candidate run in a copy of its env) steers around it. The same
    in worker processes: the plans and scores travel through the vector env."""
    from cadence.policies.search import SearchSettings
    from tests.deploy.onnx_cases import make_policy

    policy = make_policy("ddpm", down_dims=[16, 32])
    outcomes = {}
    for k, async_envs in ((1, False), (8, False), (8, True)):
        policy.search = SearchSettings(candidates=k, verifier="oracle")
        assert policy.uses_lookahead == (k > 1)
        torch.manual_seed(0)
        result = rollout(policy, make_env, [0, 1, 2, 3], TO, TA, ["state"], progress=False,
                         info_metrics=["distance"], async_envs=async_envs)
        outcomes[k, async_envs] = result
    plain, oracle, workers = outcomes[1, False], outcomes[8, False], outcomes[8, True]
    assert plain.success.sum() == 0 and oracle.success.sum() >= 2
    assert (oracle.lengths > plain.lengths).all()
    np.testing.assert_array_equal(workers.lengths, oracle.lengths)
    np.testing.assert_array_equal(workers.final_info["distance"], oracle.final_info["distance"])


class PlanRecorder:
    """Wants the last plan (like search with the coherence verifier); records what it is given.
    Its chunk's actions hold the env's goal (its identity) and the call count."""

    uses_previous = True

    def __init__(self):
        self.calls = []           # (goal x per row, chunk, previous or None)

    def predict_chunk(self, obs, previous=None):
        goal_x = obs["state"][:, -1, 4]
        b = goal_x.shape[0]
        chunk = torch.zeros(b, TP, 2)
        chunk[:, :, 0] = goal_x[:, None] * torch.linspace(1, 2, TP)                 # x target: near the goal's x
        speed = torch.where(goal_x > 0, 0.1, 0.03)[:, None]       # y: creeps towards the obstacle, some faster
        chunk[:, :, 1] = -0.6 + speed * len(self.calls) + torch.arange(TP) / 1000.0
        self.calls.append((goal_x.clone(), chunk, previous))
        return ActionChunk(chunk, start=TO - 1)


def test_a_policy_that_wants_it_gets_the_rest_of_its_last_plan_for_the_rows_still_running():
    policy = PlanRecorder()
    rollout(policy, make_env, [0, 1, 2], TO, TA, ["state"], progress=False)
    sizes = [len(goals) for goals, _, _ in policy.calls]
    assert policy.calls[0][2] is None and sizes[0] > sizes[-1] > 0              # the batch shrinks on the way
    for (goals_before, chunk_before, _), (goals, _, previous) in zip(policy.calls, policy.calls[1:]):
        rows = [int(torch.nonzero(goals_before == g)[0, 0]) for g in goals]       # the same envs last time
        assert torch.equal(previous, chunk_before[rows, TO - 1 + TA:])


class ContinuedLookahead:
    """At its first call (the reset) scores ``plans`` each followed by ``chunks`` chunks of the carrot
    policy in copies of the envs, and records the scores and the rows each continuation follows; then
    drives on as the carrot."""

    uses_lookahead = True

    def __init__(self, plans: np.ndarray, chunks: int):
        self.plans, self.chunks, self.carrot = plans, chunks, CarrotPolicy()
        self.scores, self.groups = None, []

    def predict_chunk(self, obs, lookahead):
        if self.scores is None:
            plans = np.broadcast_to(self.plans, (obs["state"].shape[0], *self.plans.shape))
            self.scores = lookahead(np.ascontiguousarray(plans), continue_with=self.follow, chunks=self.chunks)
        return self.carrot.predict_chunk(obs)

    def follow(self, obs, group):
        self.groups.append(group)
        return self.carrot.predict_chunk(obs)


def _by_hand(seed: int, plan: np.ndarray, chunks: int) -> float:
    """A plan then ``chunks`` carrot chunks, run in an env of its own from the reset of ``seed``."""
    from cadence.envs.lookahead import FAILURE, SUCCESS

    env = make_env()
    obs, _ = env.reset(seed=seed)
    seen = [obs["state"]] * TO
    carrot = CarrotPolicy()
    for actions in [plan] + [None] * chunks:
        if actions is None:
            history = torch.from_numpy(np.stack(seen[-TO:]))[None].float()
            actions = carrot.predict_chunk({"state": history}).executable(TA)[0].numpy()
        for action in actions:
            obs, _, terminated, truncated, info = env.step(action)
            seen.append(obs["state"])
            if info["is_success"]:
                return SUCCESS
            if terminated:
                return FAILURE
    return env.unwrapped.progress()


@pytest.mark.parametrize("async_envs", [False, True], ids=["this_process", "workers"])
def test_a_continued_lookahead_scores_what_running_the_plan_then_the_policy_would_give(async_envs):
    """The candidate's actions, then the policy's own chunks (each fed the branch's latest observations,
    the env's history before it), scored where the last leaves the episode - as running them in an env
    of its own would; a plan that ends the episode is not continued; the real episodes go on untouched."""
    plans = np.stack([np.tile([0.0, -0.7], (TA, 1)),        # hold still-ish below the obstacle
                      np.tile([-0.6, -0.5], (TA, 1)),       # towards the left lane
                      np.tile([0.0, 0.0], (TA, 1))])        # into the obstacle: a collision
    seeds = [0, 3]
    policy = ContinuedLookahead(plans, chunks=2)
    result = _run(policy, seeds=seeds, async_envs=async_envs)
    expected = np.array([[_by_hand(seed, plan, 2) for plan in plans] for seed in seeds])
    np.testing.assert_allclose(policy.scores, expected, rtol=0, atol=1e-9)
    assert (policy.scores[:, 2] == -10.0).all() and (policy.scores[:, :2] > -10.0).all()
    assert [g.tolist() for g in policy.groups] == [[0, 0, 1, 1]] * 2           # the collided plan is not continued
    plain = _run(CarrotPolicy(), seeds=seeds)
    np.testing.assert_array_equal(result.lengths, plain.lengths)
    np.testing.assert_array_equal(result.success, plain.success)
