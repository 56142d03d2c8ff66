"""The control loop against a real-time simulated robot: timing, staleness, holds, blending."""
import numpy as np
import pytest

from cadence.datasets.normalizer import Normalizer
from cadence.deploy.control_loop import ControlLoop, LoopConfig
from cadence.deploy.inference_worker import InferenceWorker
from cadence.deploy.runtimes import TorchRuntime
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import RobotError, RobotTimeout
from cadence.hardware.sim_robot import SimRobot
from cadence.policies.search import SearchSettings

from ..policies.test_policy import STATS, make_policy

RATE = 20.0


def hovering_policy():
    """An untrained DDPM policy (clipped samples) whose actions stay within 5 cm of the start
    area, so episodes neither end early by collision nor succeed."""
    policy = make_policy("ddpm")
    stats = {**STATS, "action": {"min": np.array([-0.05, -0.65]), "max": np.array([0.05, -0.55])}}
    policy.normalizer = Normalizer.from_stats(stats, {"state": "limits", "action": "limits"})
    return policy


class LateClock(MonotonicClock):
    """Wakes the loop 78% of a period late on the given calls (a preempted control thread): past the
    robot's next step (75% after a tick), short of a skipped tick (100%). The reading right after
    each wake is the intended wake time, so a loaded machine's own scheduling delay cannot turn the
    staged lateness into a skipped tick (or an on-time tick into a late one)."""

    def __init__(self, late_calls):
        self.late_calls, self.calls, self._woke = set(late_calls), 0, None

    def sleep_until(self, t):
        self.calls += 1
        self._woke = t + (0.78 / RATE if self.calls in self.late_calls else 0.0)
        super().sleep_until(self._woke)

    def now(self):
        woke, self._woke = self._woke, None
        return super().now() if woke is None else woke


def run_loop(blend="freeze", delay=(0.03, 0.06), ticks=40, exec_horizon=8, expected_latency=0.07, clock=None):
    robot = SimRobot("cadence/BimodalReach-v0", rate_hz=RATE, obs_keys=["state"])
    robot.connect()
    worker = InferenceWorker(TorchRuntime(hovering_policy()), start=1, inject_delay_s=delay)
    cfg = LoopConfig(RATE, exec_horizon, blend, latency_estimate_s=expected_latency)
    loop = ControlLoop(robot, worker, ["state"], obs_horizon=2, chunk_length=15, cfg=cfg, clock=clock)
    try:
        result = loop.run_episode(seed=0, max_ticks=ticks)
    finally:
        worker.stop()
        robot.disconnect()
    return loop, result, robot


@pytest.mark.parametrize("blend", ["replace", "ensemble", "freeze"])
def test_loop_executes_fresh_actions_on_time_and_replans(blend):
    loop, result, robot = run_loop(blend)
    summary = loop.log.summary(period=1 / RATE)
    ran = [t for t in loop.log.ticks if t.source == "chunk"]
    assert result.ticks == 40 and summary["ticks"] == 40
    assert summary["late_sends"] == 0
    for t in ran:                                     # each action is for the robot's next step
        assert t.t_start <= t.due < t.t_start + 1 / RATE + 1e-6
    assert summary["hold_ticks"] == 0                 # latency well inside the chunk: never starved
    assert len({t.chunk for t in ran}) >= 4           # replanned throughout
    assert summary["seams"] >= 3
    assert robot.steps >= 35


def test_a_late_tick_serves_the_next_step_and_the_tick_after_it_neither_holds_nor_repeats():
    """A tick woken 78% of a period late already sends the next step's action; the on-time tick
    after it must leave that command alone (a hold there would cancel it)."""
    late = {12, 19, 26, 33}
    loop, _, _ = run_loop(ticks=40, clock=LateClock(late))
    by_k = {t.k: t for t in loop.log.ticks}
    for call in late:                               # sleep call n wakes tick n - 1
        assert by_k[call - 1].source == "chunk" and by_k[call].source == "sent", (call, by_k[call].source)
    dues = [round(t.due, 6) for t in loop.log.ticks if t.source == "chunk"]
    assert len(dues) == len(set(dues)) and loop.log.summary(period=1 / RATE)["hold_ticks"] == 0


def test_starved_loop_holds_and_never_runs_stale_actions():
    # 1 s of inference delay (70 ms expected) against chunks that cover 15 / 20 Hz = 0.75 s.
    loop, _, robot = run_loop(delay=(1.0, 1.0), ticks=50)
    summary = loop.log.summary(period=1 / RATE)
    assert summary["hold_ticks"] > 0 and summary["late_sends"] == 0
    assert robot.held_steps > 0


def test_latency_longer_than_a_chunk_is_refused():
    with pytest.raises(ValueError, match="cannot cover"):
        ControlLoop(None, None, ["state"], 2, 15, LoopConfig(10.0, 8, latency_estimate_s=1.6))
    with pytest.raises(ValueError, match="blend"):
        LoopConfig(10.0, 8, blend="smooth")


def run_recorded(runtime, delay, cfg: LoopConfig, ticks: int = 50):
    """One episode; the loop and every inference result it received, in order."""
    robot = SimRobot("cadence/BimodalReach-v0", rate_hz=RATE, obs_keys=["state"])
    robot.connect()
    worker = InferenceWorker(runtime, start=1, inject_delay_s=delay)
    results = []
    poll = worker.poll
    worker.poll = lambda: results.append(poll()) or results[-1]
    loop = ControlLoop(robot, worker, ["state"], 2, 15, cfg)
    try:
        loop.run_episode(seed=0, max_ticks=ticks)
    finally:
        worker.stop()
        robot.disconnect()
    return loop, [r for r in results if r is not None]


def test_freeze_keeps_what_the_robot_was_committed_to_across_seams():
    """Every request carries the actions due while it is computed; the new chunk reproduces them,
    so the robot runs the same action at a committed slot whichever chunk it comes from."""
    loop, results = run_recorded(TorchRuntime(hovering_policy()), (0.06, 0.09),
                                 LoopConfig(RATE, 8, "freeze", latency_estimate_s=0.1))
    done = [r for r in results if r.request.prefix is not None]
    assert len(done) >= 3
    executed = {round(t.due, 6): np.array(t.action) for t in loop.log.ticks if t.source == "chunk"}
    checked = 0
    for r in done:
        prefix = r.request.prefix
        np.testing.assert_allclose(r.actions[: len(prefix)], prefix, atol=1e-5)
        for j, value in enumerate(prefix):
            due = round(r.request.t_obs + j / RATE, 6)
            if due in executed:
                np.testing.assert_allclose(executed[due], value, atol=1e-5)
                checked += 1
    assert checked >= 3
    assert all(r.request.previous is None for r in done)        # no verifier asked for the plan


def test_a_coherence_search_is_given_the_plan_the_robot_is_following():
    runtime = TorchRuntime(hovering_policy())
    runtime.policy.search = SearchSettings(4, "best_of", "coherence")
    loop, done = run_recorded(runtime, (0.03, 0.05), LoopConfig(RATE, 8, "replace", latency_estimate_s=0.06))
    assert len(done) >= 3 and all(r.error is None for r in done)
    assert done[0].request.previous is None                     # the episode's first chunk: no plan yet
    planned = [r for r in done if r.request.previous is not None]
    assert len(planned) >= 2
    sent = {round(t.due, 6): np.array(t.action) for t in loop.log.ticks if t.source == "chunk"}
    checked = 0
    for r in planned:
        assert r.request.previous.shape[1] == 2 and len(r.request.previous) <= 15
        for j, value in enumerate(r.request.previous):          # the plan: what the robot ran at those times
            due = round(r.request.t_obs + j / RATE, 6)          # until this request's own chunk replaced it
            if due in sent and due < r.t_done:
                np.testing.assert_allclose(sent[due], value, atol=1e-6)
                checked += 1
    assert checked >= 2


def test_failed_inferences_hold_the_robot_and_count_as_misses():
    """A policy whose actions overflow (a tampered normaliser) never moves the robot: every chunk is
    refused as non-finite, the robot holds, and the summary counts them as errors and misses."""
    policy = hovering_policy()
    policy.normalizer.params("action")[0].fill_(1e-40)      # unnormalise divides by it: actions overflow
    robot = SimRobot("cadence/BimodalReach-v0", rate_hz=RATE, obs_keys=["state"])
    robot.connect()
    worker = InferenceWorker(TorchRuntime(policy), start=1)
    loop = ControlLoop(robot, worker, ["state"], obs_horizon=2, chunk_length=15,
                       cfg=LoopConfig(RATE, 8, latency_estimate_s=0.07))
    try:
        loop.run_episode(seed=0, max_ticks=20)
    finally:
        worker.stop()
        robot.disconnect()
    summary = loop.log.summary(period=1 / RATE)
    assert summary["inference_errors"] >= 3
    assert summary["first_errors"]["inference_errors"].startswith("NonFiniteActions: the policy's actions are not finite")
    assert summary["deadline_misses"] >= summary["inference_errors"]
    assert not any(t.source == "chunk" for t in loop.log.ticks) and robot.held_steps > 0


class WideRuntime:
    """A runtime whose chunks carry one action entry more than the robot takes."""

    def __init__(self, inner):
        self.inner = inner

    def predict(self, obs, **kwargs):
        chunk = self.inner.predict(obs, **kwargs)
        return np.concatenate([chunk, np.zeros((*chunk.shape[:-1], 1), chunk.dtype)], axis=-1)


def test_chunks_of_another_action_size_hold_the_robot_as_failed_inferences():
    robot = SimRobot("cadence/BimodalReach-v0", rate_hz=RATE, obs_keys=["state"])
    robot.connect()
    worker = InferenceWorker(WideRuntime(TorchRuntime(hovering_policy())), start=1)
    loop = ControlLoop(robot, worker, ["state"], obs_horizon=2, chunk_length=15,
                       cfg=LoopConfig(RATE, 8, latency_estimate_s=0.07))
    try:
        loop.run_episode(seed=0, max_ticks=20)          # the robot is never lost: its calls do not fail
    finally:
        worker.stop()
        robot.disconnect()
    summary = loop.log.summary(period=1 / RATE)
    assert summary["inference_errors"] >= 3
    assert summary["first_errors"]["inference_errors"] == "actions of shape (15, 3), not (steps, 2)"
    assert not any(t.source == "chunk" for t in loop.log.ticks) and robot.held_steps > 0


class LosingHolds(SimRobot):
    """A robot whose hold requests fail (a lost reply) the first ``failures`` times."""

    def __init__(self, failures, **kwargs):
        super().__init__(**kwargs)
        self.failures, self.holds = failures, 0

    def hold(self):
        self.holds += 1
        if self.failures > 0:
            self.failures -= 1
            raise RobotTimeout("no reply to hold")
        super().hold()


@pytest.mark.parametrize("failures", [2, 10])
def test_the_hold_ending_an_episode_is_asked_again_when_a_reply_is_lost(failures):
    """A lost reply to the last hold ended `cadence run` under load; it is retried up to
    ``max_robot_errors`` times, then the robot counts as lost."""
    robot = LosingHolds(failures, env_id="cadence/BimodalReach-v0", rate_hz=RATE, obs_keys=["state"])
    robot.connect()
    worker = InferenceWorker(TorchRuntime(hovering_policy()), start=1, inject_delay_s=(0.0, 0.0))
    loop = ControlLoop(robot, worker, ["state"], obs_horizon=2, chunk_length=15,
                       cfg=LoopConfig(RATE, 8, "freeze", latency_estimate_s=0.05, max_robot_errors=3))
    try:
        if failures < 10:          # the tick may hold too (and fail): at most 2 lost replies in a row
            assert loop.run_episode(seed=0, max_ticks=1).ticks == 1
            assert robot.holds >= failures + 1
        else:
            with pytest.raises(RobotError, match="could not hold the robot at the end of the episode"):
                loop.run_episode(seed=0, max_ticks=1)
    finally:
        worker.stop()
        robot.disconnect()
