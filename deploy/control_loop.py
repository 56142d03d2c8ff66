"""The fixed-rate control loop: ticks on a monotonic clock, inference beside them.

Every tick (period ``1 / rate_hz``, on a fixed grid that never drifts):

1. read the robot's newest observation and add it to the history if it is new;
2. merge a chunk the inference worker has finished: its actions are due at
   ``t_obs + j * period`` and those already past are dropped (never executed);
3. execute the action due at the robot's next step, or ``hold()`` if there is none (first
   chunk not there yet: a "wait" tick; chunk used up before the next one came: a "hold", a
   deadline miss); if a late tick before this one already sent it, do nothing (a "sent" tick);
4. if the worker is idle and the current chunk has served about ``exec_horizon`` actions
   (counting those it will serve while the next is computed), submit the current history.

Blending at the seam: ``replace``, ``ensemble`` (temporal ensembling) or ``freeze``: the
actions that will run while the next chunk is computed (the expected delay, from the
measured latency) are sent along as a prefix, and the policy inpaints them, so the new chunk
continues from what the robot is committed to (real-time chunking without guidance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Robot, RobotError

from .action_schedule import ActionSchedule
from .inference_worker import InferenceRequest, InferenceWorker
from .observation_history import ObservationHistory
from .tick_log import Tick, TickLog

BLENDS = ("replace", "ensemble", "freeze")


@dataclass
class LoopConfig:
    rate_hz: float
    exec_horizon: int                 # actions executed from a chunk before the next should take over
    blend: str = "freeze"
    ensemble_decay: float = 0.01
    action_lead_s: float = 0.0        # an action must reach the robot this long before it is due
    latency_estimate_s: float = 0.0   # expected inference latency (p99), sets the replan lead
    tick_phase: float = 0.25          # ticks run this fraction of a period after the robot's steps
    max_robot_errors: int = 3         # ticks in a row whose robot calls fail before the robot counts as lost

    def __post_init__(self):
        if self.blend not in BLENDS:
            raise ValueError(f"control.blend must be one of {BLENDS}, got {self.blend!r}")
        if self.max_robot_errors < 1:
            raise ValueError(f"control.max_robot_errors must be >= 1, got {self.max_robot_errors}")
        if not self.rate_hz > 0 or not math.isfinite(self.rate_hz) or self.exec_horizon < 1:   # NaN too
            raise ValueError(f"need rate_hz > 0 and exec_horizon >= 1, got {self.rate_hz} and {self.exec_horizon}")


@dataclass
class EpisodeResult:
    seed: int | None
    ticks: int
    success: bool
    info: dict


class ControlLoop:
    def __init__(self, robot: Robot, worker: InferenceWorker, obs_keys: Sequence[str], obs_horizon: int,
                 chunk_length: int, cfg: LoopConfig, clock=None, log: TickLog | None = None):
        self.robot, self.worker, self.cfg = robot, worker, cfg
        self.clock = clock or MonotonicClock()
        self.period = 1.0 / cfg.rate_hz
        self.chunk_length = chunk_length
        if cfg.exec_horizon > chunk_length:
            raise ValueError(f"exec_horizon ({cfg.exec_horizon}) exceeds the chunk's {chunk_length} future actions")
        self.delay_steps = math.ceil(cfg.latency_estimate_s / self.period)
        if self.delay_steps >= chunk_length:
            raise ValueError(f"an inference latency of {cfg.latency_estimate_s * 1e3:.0f} ms is {self.delay_steps} "
                             f"control periods: a chunk of {chunk_length} actions cannot cover it")
        self.history = ObservationHistory(obs_horizon, obs_keys)
        blend = "ensemble" if cfg.blend == "ensemble" else "replace"
        self.schedule = ActionSchedule(self.period, blend, cfg.ensemble_decay, cfg.action_lead_s)
        self.log = log or TickLog()
        self._heartbeat = getattr(robot, "heartbeat", lambda: None)   # the safety filter's watchdog
        self._chunk_id = 0
        # search's coherence verifier compares candidates with the plan the robot is following
        policy = getattr(getattr(worker, "runtime", None), "policy", None)
        self._wants_plan = bool(getattr(policy, "uses_previous", False))
        self._episode = -1

    def _replan_due(self, now: float) -> bool:
        # A chunk arrives with its first d (delay) actions stale; asking again when T actions remain
        # and arriving d' later leaves it (chunk_length - d - T) + d' ~ chunk_length - T executed: T is set so
        # that each chunk serves exec_horizon actions, and kept above the delay so none runs dry.
        threshold = max(self.chunk_length - self.cfg.exec_horizon, self.delay_steps + 1)
        return self.schedule.remaining(now) <= threshold

    def _request(self, now: float) -> InferenceRequest:
        latest = self.history.latest
        prefix = None
        if self.cfg.blend == "freeze":
            # The actions due from the observation until the answer is expected (its age plus the
            # latency): the robot is committed to them, so the new chunk must continue from them.
            ahead = now - latest.t_capture + self.cfg.latency_estimate_s + self.cfg.action_lead_s
            n = min(self.chunk_length, math.ceil(ahead / self.period) + 1)
            prefix = self.schedule.committed(latest.t_capture, n)
        previous = self.schedule.committed(latest.t_capture, self.chunk_length) if self._wants_plan else None
        self._chunk_id += 1
        return InferenceRequest(self.history.window(), latest.t_capture, self._chunk_id, prefix, previous)

    def run_episode(self, seed: int | None = None, max_ticks: int = 1000) -> EpisodeResult:
        self._episode += 1
        self.history.clear()
        self.schedule.clear()
        if self.worker.busy and self.worker.wait(timeout=30.0) is None:   # a request from the last episode
            raise RuntimeError("the inference worker has not answered for 30 s")
        while self.worker.poll() is not None:
            pass
        self.worker.reset_state()          # a stateful policy (streaming buffer) starts the episode afresh
        obs = self.robot.reset(seed)
        self.history.push(obs)
        started = False
        # Tick on the robot's step grid (observation times), a little after each step, so the
        # action for the next step is sent almost a whole period before that step.
        if not math.isfinite(obs.t_capture):
            raise RobotError(f"the robot's reset observation has capture time {obs.t_capture}")
        t0 = obs.t_capture + self.cfg.tick_phase * self.period
        t0 += max(0, math.ceil((self.clock.now() - t0) / self.period)) * self.period
        k, info, failing = 0, dict(obs.info), 0
        for k in range(max_ticks):
            t_sched = t0 + k * self.period
            self.clock.sleep_until(t_sched)
            t_start = self.clock.now()
            if t_start - t_sched > self.period:      # fell a whole period behind: skip, never catch up
                self.log.count("skipped_ticks")
                self._heartbeat()
                failing = 0 if self._hold() else failing + 1
                if failing >= self.cfg.max_robot_errors:
                    raise RobotError(f"lost the robot: {failing} ticks in a row failed (hold)")
                continue
            tick = Tick(self._episode, k, t_sched, t_start, t_start, "hold")
            self._heartbeat()
            errors = []
            try:
                obs = self.robot.latest_observation()
            except RobotError as exc:
                obs = None
                errors.append(exc)
            if obs is not None:
                self.history.push(obs)
                info = dict(obs.info)
                if info.get("done"):
                    tick.source = "done"
                    tick.t_end = self.clock.now()
                    self.log.add(tick)
                    break
            result = self.worker.poll()
            if result is not None:
                tick.inference_ms = result.latency * 1e3
                shape = self.robot.spec.action.shape
                if result.actions is not None and (result.actions.ndim != 2 or result.actions.shape[1:] != shape):
                    # the policy's fault, not the robot's: the robot holds, as for any failed inference
                    result = replace(result, actions=None, error=f"actions of shape {result.actions.shape}, not "
                                                                 f"(steps, {', '.join(map(str, shape))})")
                if result.actions is None:
                    self.log.count("inference_errors", detail=result.error)
                else:
                    self.schedule.merge(result.actions, result.request.t_obs, result.request.chunk, t_start)
                    started = True
            action = self.schedule.take(t_start)
            try:
                if action is None and self.schedule.already_sent(t_start):
                    tick.source = "sent"         # a late tick before this one sent it: leave it be
                elif action is None:
                    tick.source = "hold" if started else "wait"
                    self.robot.hold()
                else:
                    tick.source, tick.chunk, tick.due = "chunk", action.chunk, action.due
                    tick.action = action.value.tolist()
                    applied = self.robot.send_action(action.value)
                    tick.applied = None if applied is None else np.asarray(applied, dtype=float).tolist()
            except RobotError as exc:
                errors.append(exc)
            for exc in errors:
                self.log.count(f"robot_error:{type(exc).__name__}", detail=str(exc))
            failing = failing + 1 if errors else 0
            if failing >= self.cfg.max_robot_errors:
                tick.t_end = self.clock.now()
                self.log.add(tick)
                raise RobotError(f"lost the robot: {failing} ticks in a row failed ({errors[-1]})")
            if not self.worker.busy and (not started or self._replan_due(t_start)) and self.history.latest:
                self.worker.submit(self._request(t_start))
            tick.t_end = self.clock.now()
            self.log.add(tick)
        for _ in range(self.cfg.max_robot_errors):     # the episode ends held: a lost reply is asked again
            if self._hold():
                break
        else:
            raise RobotError(f"could not hold the robot at the end of the episode ({self.cfg.max_robot_errors} tries)")
        return EpisodeResult(seed, k + 1, bool(info.get("is_success", False)), info)

    def _hold(self) -> bool:
        """Hold the robot; a failed request is counted (``robot_error:...``) and False returned."""
        try:
            self.robot.hold()
        except RobotError as exc:
            self.log.count(f"robot_error:{type(exc).__name__}", detail=str(exc))
            return False
        return True
