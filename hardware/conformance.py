"""Does a driver meet the control loop's contract? A conformance run on any :class:`Robot`.

Read-only unless ``move=True``: without it the robot is only connected, reset, observed and
held (``hold`` stops motion; it never starts any). With ``move=True`` it also receives small
steps (``step`` of its action range) around its measured position, a non-finite action, and
a command past a limit when one is within one step. Each item passes, fails or is skipped
with the numbers it measured; a failure names what was wrong.

Items (in order): ``connect``, ``spec``, ``reset``, ``clock`` (capture times on this host's
monotonic clock, not in the future by more than a period), ``stream`` (``seq`` increasing,
``t_capture`` non-decreasing, fresh observations at >= half the rate), ``latency``
(``latest_observation`` p99 within ``latency_fraction`` of the control period), ``hold``
(the measured position still after a settling time), ``send_action``, ``non-finite``,
``clipping``, ``disconnect`` (idempotent; afterwards no fresh observation and no command
accepted).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from cadence.hardware.robot import Observation, Robot, RobotSpec

MAX_ELEMENTS = 1 << 26          # one observation array; beyond it a spec is not sane
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class CheckItem:
    name: str
    result: str                  # pass | fail | skip
    measured: str = ""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.result == FAIL


@dataclass(frozen=True)
class CheckSettings:
    move: bool = False
    latency_fraction: float = 0.2     # latest_observation p99 against this fraction of the period
    seconds: float = 2.0              # how long the observation stream is sampled
    settle_s: float = 0.5             # after hold(), before stillness is measured
    hold_s: float = 1.0               # stillness window
    hold_tolerance: float = 0.01      # largest motion while held, fraction of the action range (or absolute)
    step: float = 0.02                # a --move step, fraction of the action range
    position: Optional[tuple] = None  # (key, start, stop): the measured position in action coordinates


def check_robot(robot: Robot, settings: CheckSettings = CheckSettings(),
                progress: Callable[[CheckItem], None] = lambda item: None) -> list[CheckItem]:
    """Every item, in order; items that need an earlier one that failed are skipped."""
    run = _Run(robot, settings, progress)
    try:
        run.all()
    finally:
        if not run.disconnected:
            try:
                robot.disconnect()
            except Exception:
                pass
    return run.items


class _Run:
    def __init__(self, robot: Robot, settings: CheckSettings, progress):
        self.robot, self.s, self.progress = robot, settings, progress
        self.items: list[CheckItem] = []
        self.spec: RobotSpec | None = None
        self.position_of: Callable[[Observation], np.ndarray] | None = None
        self.disconnected = False

    def add(self, name: str, result: str, measured: str = "", detail: str = "") -> bool:
        item = CheckItem(name, result, measured, detail)
        self.items.append(item)
        self.progress(item)
        return result != FAIL

    def all(self) -> None:
        if not (self.connect() and self.check_spec() and self.reset()):
            for name in ("clock", "stream", "latency", "hold", "send_action", "non-finite", "clipping"):
                self.add(name, SKIP, detail="needs connect, spec and reset")
            self.check_disconnect()
            return
        self.check_stream()
        self.check_hold()
        if self.s.move:
            self.check_moves()
        else:
            for name in ("send_action", "non-finite", "clipping"):
                self.add(name, SKIP, detail="read-only (--move allows small motions)")
        self.check_disconnect()

    # --- connect, spec, reset -------------------------------------------------------------
    def connect(self) -> bool:
        t = time.monotonic()
        try:
            self.robot.connect()
        except Exception as exc:
            return self.add("connect", FAIL, detail=_one_line(exc))
        return self.add("connect", PASS, f"{(time.monotonic() - t) * 1e3:.0f} ms")

    def check_spec(self) -> bool:
        spec = getattr(self.robot, "spec", None)
        problems = _spec_problems(spec)
        if problems:
            return self.add("spec", FAIL, detail="; ".join(problems))
        self.spec = spec
        self.position_of, how = _position_reader(spec, self.s.position)
        shapes = ", ".join(f"{k} {list(f.shape)} {f.dtype}" for k, f in spec.observation.items())
        return self.add("spec", PASS, f"{spec.rate_hz:g} Hz; action {list(spec.action.shape)}; {shapes}", how)

    def reset(self) -> bool:
        try:
            obs = self.robot.reset(seed=0)
        except Exception as exc:
            return self.add("reset", FAIL, detail=_one_line(exc))
        problems = _observation_problems(obs, self.spec)
        if problems:
            return self.add("reset", FAIL, detail="; ".join(problems))
        return self.add("reset", PASS, f"seq {obs.seq}")

    # --- the observation stream -----------------------------------------------------------
    def check_stream(self) -> None:
        period = 1.0 / self.spec.rate_hz
        latencies, seen, problems = [], [], []
        t_end = time.monotonic() + self.s.seconds
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            try:
                obs = self.robot.latest_observation()
            except Exception as exc:
                problems.append(f"latest_observation raised {_one_line(exc)}")
                break
            t1 = time.monotonic()
            latencies.append(t1 - t0)
            if obs is not None:
                if not seen or obs.seq != seen[-1][1].seq:
                    problems += [p for p in _observation_problems(obs, self.spec) if p not in problems]
                    seen.append((t1, obs))
            time.sleep(max(0.0, period / 4 - (time.monotonic() - t0)))
        self._clock(seen, period)
        self._stream(seen, problems)
        self._latency(latencies, period)

    def _clock(self, seen, period: float) -> None:
        if not seen:
            self.add("clock", FAIL, detail="no observation arrived")
            return
        ahead = max(0.0, max(obs.t_capture - t_read for t_read, obs in seen))
        age = float(np.median([t_read - obs.t_capture for t_read, obs in seen]))
        measured = f"median age {age * 1e3:.1f} ms, most ahead {ahead * 1e3:.1f} ms"
        if ahead > period + 0.005:
            self.add("clock", FAIL, measured, "t_capture is in the future: capture times must be time.monotonic() "
                     "of this host")
        elif age > 10 * period:
            self.add("clock", FAIL, measured, f"observations are {age / period:.0f} periods old when read "
                     "(t_capture must be time.monotonic() at capture)")
        else:
            self.add("clock", PASS, measured)

    def _stream(self, seen, problems: list[str]) -> None:
        seqs = [obs.seq for _, obs in seen]
        stamps = [obs.t_capture for _, obs in seen]
        if any(b <= a for a, b in zip(seqs, seqs[1:])):
            problems.append(f"seq not increasing ({_first_bad(seqs, lambda a, b: b <= a)})")
        if any(b < a for a, b in zip(stamps, stamps[1:])):
            problems.append("t_capture went backwards")
        rate = (len(seen) - 1) / self.s.seconds if seen else 0.0
        measured = f"{len(seen)} fresh, {rate:.1f}/s of {self.spec.rate_hz:g}"
        if rate < 0.5 * self.spec.rate_hz:
            problems.append(f"fresh observations at {rate:.1f}/s, below half the rate {self.spec.rate_hz:g} Hz")
        self.add("stream", FAIL if problems else PASS, measured, "; ".join(problems))

    def _latency(self, latencies: list[float], period: float) -> None:
        if not latencies:
            self.add("latency", FAIL, detail="latest_observation never returned")
            return
        p99 = float(np.percentile(latencies, 99))
        bound = self.s.latency_fraction * period
        measured = f"p99 {p99 * 1e3:.2f} ms (max {max(latencies) * 1e3:.2f}) over {len(latencies)} calls"
        if p99 > bound:
            self.add("latency", FAIL, measured, f"latest_observation p99 above {bound * 1e3:.1f} ms "
                     f"({self.s.latency_fraction:g} of the {period * 1e3:.1f} ms period): it must not block")
        else:
            self.add("latency", PASS, measured, f"bound {bound * 1e3:.1f} ms")

    # --- hold -----------------------------------------------------------------------------
    def check_hold(self) -> None:
        if self.position_of is None:
            self.add("hold", SKIP, detail="no measured position (set safety.position_obs=[key,start,stop])")
            return
        try:
            self.robot.hold()
            time.sleep(self.s.settle_s)
            track = self._positions(self.s.hold_s)
        except Exception as exc:
            self.add("hold", FAIL, detail=_one_line(exc))
            return
        if len(track) < 2:
            self.add("hold", FAIL, detail="fewer than two observations while held")
            return
        motion = np.max(track, axis=0) - np.min(track, axis=0)
        tolerance = self._tolerance()
        worst = int(np.argmax(motion / tolerance))
        measured = f"moved {motion[worst]:.4g} (element {worst}) in {self.s.hold_s:g} s"
        if np.any(motion > tolerance):
            self.add("hold", FAIL, measured, f"the position kept moving while held (tolerance {tolerance[worst]:.3g})")
        else:
            self.add("hold", PASS, measured, f"tolerance {tolerance[worst]:.3g}")

    def _positions(self, seconds: float) -> np.ndarray:
        track, last_seq = [], None
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            obs = self.robot.latest_observation()
            if obs is not None and obs.seq != last_seq:
                track.append(self.position_of(obs))
                last_seq = obs.seq
            time.sleep(0.25 / self.spec.rate_hz)
        return np.asarray(track, dtype=np.float64)

    def _range(self) -> np.ndarray | None:
        a = self.spec.action
        if a.low is None or a.high is None:
            return None
        return np.asarray(a.high, float) - np.asarray(a.low, float)

    def _tolerance(self) -> np.ndarray:
        span = self._range()
        n = int(np.prod(self.spec.action.shape))
        return np.full(n, self.s.hold_tolerance) if span is None else self.s.hold_tolerance * span

    # --- --move ---------------------------------------------------------------------------
    def check_moves(self) -> None:
        span = self._range()
        obs = self._latest()
        if self.position_of is None or span is None or obs is None:
            for name in ("send_action", "non-finite", "clipping"):
                self.add(name, SKIP, detail="needs a measured position and finite action limits")
            return
        low, high = np.asarray(self.spec.action.low, float), np.asarray(self.spec.action.high, float)
        here = np.clip(self.position_of(obs), low, high)
        step = self.s.step * span
        target = np.clip(here + np.where(here < (low + high) / 2, step, -step), low, high)
        self._send_step(target)
        self._non_finite(here)
        self._clipping(here, low, high, step)
        try:
            self.robot.hold()
        except Exception as exc:
            self.add("hold after moves", FAIL, detail=_one_line(exc))

    def _send_step(self, target: np.ndarray) -> None:
        try:
            applied = np.asarray(self.robot.send_action(target.astype(np.float32)))
        except Exception as exc:
            self.add("send_action", FAIL, detail=f"a small step was refused: {_one_line(exc)}")
            return
        error = _applied_error(applied, target, self.spec)
        if isinstance(error, str):
            self.add("send_action", FAIL, detail=error)
        elif error > 1e-3 * float(np.max(self._range())):
            self.add("send_action", FAIL, f"differs by {error:.4g}",
                     "a step within the limits came back changed: return the action actually applied")
        else:
            self.add("send_action", PASS, f"step {self.s.step:g} of range, returned as sent")

    def _non_finite(self, here: np.ndarray) -> None:
        bad = here.astype(np.float32).copy()
        bad[0] = np.nan
        try:
            applied = np.asarray(self.robot.send_action(bad))
        except Exception as exc:
            self.add("non-finite", PASS, "refused", _one_line(exc))
            return
        if applied.shape != bad.shape or not np.all(np.isfinite(applied)):
            self.add("non-finite", FAIL, detail=f"a NaN action was accepted and returned as {applied.tolist()}")
        else:
            self.add("non-finite", PASS, "replaced by a finite action", str(applied.tolist()))

    def _clipping(self, here: np.ndarray, low: np.ndarray, high: np.ndarray, step: np.ndarray) -> None:
        near_high = np.flatnonzero(high - here <= step)
        near_low = np.flatnonzero(here - low <= step)
        if not len(near_high) and not len(near_low):
            self.add("clipping", SKIP, detail="no limit within one step of the present position")
            return
        target = here.copy()
        if len(near_high):
            i = int(near_high[0])
            target[i], expected = high[i] + step[i], high[i]
        else:
            i = int(near_low[0])
            target[i], expected = low[i] - step[i], low[i]
        try:
            applied = np.asarray(self.robot.send_action(target.astype(np.float32)), dtype=np.float64)
        except Exception as exc:
            self.add("clipping", PASS, "refused", _one_line(exc))
            return
        if applied.shape != target.shape or abs(applied[i] - expected) > 1e-3 * (high[i] - low[i]):
            self.add("clipping", FAIL, f"element {i}: sent {target[i]:.4g}, returned {applied.reshape(-1)[i]:.4g}",
                     f"expected the limit {expected:.4g} back: return the clipped action")
        else:
            self.add("clipping", PASS, f"element {i}: {target[i]:.4g} -> {applied[i]:.4g}")

    def _latest(self) -> Observation | None:
        try:
            return self.robot.latest_observation()
        except Exception:
            return None

    # --- disconnect -----------------------------------------------------------------------
    def check_disconnect(self) -> None:
        last = self._latest() if self.spec is not None else None
        problems = []
        try:
            self.robot.disconnect()
            self.disconnected = True
            self.robot.disconnect()
        except Exception as exc:
            problems.append(f"disconnect raised {_one_line(exc)} (it must be idempotent)")
        wait = 0.1 if self.spec is None else max(0.1, 2.0 / self.spec.rate_hz)
        time.sleep(wait)                 # an observation in flight at disconnect may still land
        first = self._latest()
        time.sleep(wait)
        later = self._latest()
        if later is not None and (first is None or later.seq != first.seq):
            problems.append("fresh observations after disconnect")
        if last is not None and self.position_of is not None:
            try:
                self.robot.send_action(np.asarray(self.position_of(last), np.float32))
                problems.append("send_action accepted a command after disconnect (raise RobotError)")
            except Exception:
                pass
        self.add("disconnect", FAIL if problems else PASS, "" if problems else "idempotent, silent afterwards",
                 "; ".join(problems))


# --- helpers ------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _first_bad(values: list, bad: Callable) -> str:
    for a, b in zip(values, values[1:]):
        if bad(a, b):
            return f"{a} then {b}"
    return ""


def _spec_problems(spec) -> list[str]:
    if not isinstance(spec, RobotSpec):
        return [f"spec is {type(spec).__name__}, not a RobotSpec (after connect)"]
    problems = []
    if not (isinstance(spec.rate_hz, (int, float)) and math.isfinite(spec.rate_hz) and 0 < spec.rate_hz <= 1000):
        problems.append(f"rate_hz {spec.rate_hz!r} is not in (0, 1000]")
    if not spec.observation:
        problems.append("no observation features")
    for key, feature in [*spec.observation.items(), ("action", spec.action)]:
        problems += [f"{key}: {p}" for p in _feature_problems(feature)]
    if len(spec.action.shape) != 1:
        problems.append(f"action shape {list(spec.action.shape)} is not 1-D")
    return problems


def _feature_problems(feature) -> list[str]:
    shape = feature.shape
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape) or math.prod(shape) > MAX_ELEMENTS:
        return [f"shape {list(shape)} is not a positive shape of at most {MAX_ELEMENTS} elements"]
    try:
        np.dtype(feature.dtype)
    except TypeError:
        return [f"dtype {feature.dtype!r} is not a numpy dtype"]
    problems = []
    for name, bound in (("low", feature.low), ("high", feature.high)):
        if bound is None:
            continue
        if len(bound) != math.prod(shape) or not all(math.isfinite(v) for v in bound):
            problems.append(f"{name} must hold {math.prod(shape)} finite values")
    if feature.low is not None and feature.high is not None and not problems:
        if any(lo >= hi for lo, hi in zip(feature.low, feature.high)):
            problems.append("low >= high")
    return problems


def _observation_problems(obs, spec: RobotSpec) -> list[str]:
    if not isinstance(obs, Observation):
        return [f"got {type(obs).__name__}, not an Observation"]
    problems = []
    missing = sorted(set(spec.observation) - set(obs.values))
    if missing:
        problems.append(f"observation lacks {missing}")
    for key, feature in spec.observation.items():
        if key not in obs.values:
            continue
        v = np.asarray(obs.values[key])
        if v.shape != tuple(feature.shape) or v.dtype != np.dtype(feature.dtype):
            problems.append(f"{key} is {v.dtype}{list(v.shape)}, spec says {feature.dtype}{list(feature.shape)}")
        elif v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            problems.append(f"{key} holds non-finite values")
    if not (isinstance(obs.t_capture, (int, float)) and math.isfinite(obs.t_capture)):
        problems.append(f"t_capture {obs.t_capture!r} is not a finite time")
    return problems


def _position_reader(spec: RobotSpec, position) -> tuple[Callable | None, str]:
    """How to read the measured position in action coordinates: ``position`` (key, start, stop)
    when given, else the one observation key shaped like the action."""
    if position is not None:
        key, start, stop = position
        if key not in spec.observation:
            return None, f"safety.position_obs key {key!r} is not observed"
        return (lambda obs: np.asarray(obs.values[key], np.float64).reshape(-1)[int(start):int(stop)],
                f"position: {key}[{start}:{stop}]")
    same = [k for k, f in spec.observation.items() if tuple(f.shape) == tuple(spec.action.shape)]
    if len(same) == 1:
        key = same[0]
        return lambda obs: np.asarray(obs.values[key], np.float64).reshape(-1), f"position: {key}"
    return None, "no position (set safety.position_obs)"


def _applied_error(applied: np.ndarray, target: np.ndarray, spec: RobotSpec) -> float | str:
    if applied.shape != tuple(spec.action.shape):
        return f"send_action returned shape {list(applied.shape)}, not the applied action {list(spec.action.shape)}"
    if not np.all(np.isfinite(applied)):
        return "send_action returned a non-finite action"
    return float(np.max(np.abs(applied.astype(np.float64) - target)))


def report(items: list[CheckItem]) -> dict:
    return {"ok": not any(i.failed for i in items), "items": [asdict(i) for i in items]}
