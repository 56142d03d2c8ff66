"""One teleoperated episode: the robot observed and commanded at a fixed rate, each tick's
observation paired with the action actually applied (after the robot's and the safety filter's
clipping), as the episode store holds demonstrations.

Per tick ``k`` (due at ``t0 + k / rate``): the newest observation, the teleop's command for it,
``send_action`` (or ``hold`` when the teleop gives none, which records nothing), then the
person's decisions. The episode ends when the robot reports ``done``, after ``max_ticks``, or on
a decision (keep, discard, rerecord, stop). ``timestamp`` is each observation's capture time
from the episode's first, so the store shows how regular the recording was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Robot

DECISIONS = ("keep", "discard", "rerecord", "stop")


@dataclass
class Recording:
    steps: dict[str, np.ndarray]            # observation keys, the action key, "timestamp"; (T, ...) each
    ended_by: str                           # done | max_ticks | keep | discard | rerecord | stop
    info: dict = field(default_factory=dict)   # the last observation's info (is_success, ...)
    ticks: int = 0
    repeated: int = 0                       # ticks that saw no new observation (recorded again)
    late: int = 0                           # ticks that started more than half a period late
    held: int = 0                           # ticks the teleop gave no command

    @property
    def length(self) -> int:
        return len(self.steps.get("timestamp", ()))


def record_episode(robot: Robot, teleop, rate_hz: float, *, action_key: str = "action", seed: int | None = None,
                   max_ticks: int = 10_000, decisions: Callable[[], list[str]] = lambda: [],
                   clock=None, on_tick: Callable[[int], None] = lambda k: None) -> Recording:
    clock = clock or MonotonicClock()
    period = 1.0 / rate_hz
    obs = robot.reset(seed=seed)
    teleop.reset(obs)
    rows: list[tuple] = []
    rec = Recording({}, "max_ticks")
    last_seq, t0 = None, clock.now()
    for k in range(max_ticks):
        due = t0 + k * period
        clock.sleep_until(due)
        rec.late += clock.now() - due > period / 2
        rec.ticks += 1
        latest = robot.latest_observation()
        if latest is not None:
            obs = latest
        rec.repeated += obs.seq == last_seq
        last_seq = obs.seq
        command = teleop.action(obs)
        if command is None:
            robot.hold()
            rec.held += 1
        else:
            applied = np.asarray(robot.send_action(np.asarray(command, np.float32)))
            rows.append((obs, applied))
        on_tick(k)
        rec.info = dict(obs.info)
        chosen = [d for d in decisions() if d in DECISIONS]
        if chosen:
            rec.ended_by = chosen[0]
            break
        if obs.info.get("done"):
            rec.ended_by = "done"
            break
    robot.hold()
    rec.steps = _stack(rows, action_key)
    return rec


def _stack(rows: list[tuple], action_key: str) -> dict[str, np.ndarray]:
    if not rows:
        return {}
    keys = list(rows[0][0].values)
    steps = {key: np.stack([np.asarray(o.values[key]) for o, _ in rows]) for key in keys}
    steps[action_key] = np.stack([a for _, a in rows]).astype(np.float32)
    t = np.array([o.t_capture for o, _ in rows], dtype=np.float64)
    steps["timestamp"] = t - t[0]
    return steps
