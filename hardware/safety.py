"""Safety in front of every robot: action clamps, a watchdog and a latching emergency stop.

:class:`SafetyFilter` wraps a :class:`~cadence.hardware.robot.Robot` and is itself one (same
spec). Every command is clamped, in this order, to the actuator limits, to ``max_delta``
around a reference (the last applied command; after a hold or at the start the measured
position, if ``position_obs`` says where to read it; otherwise no delta clamp), and to the
workspace box. The workspace wins over ``max_delta`` where the two disagree.

The watchdog trips when the newest observation is older than ``watchdog_timeout_s`` or when
neither ``send_action`` nor ``heartbeat`` was called for that long (the control loop
stalled); it is armed by the first ``send_action`` / ``heartbeat`` after ``reset``. While
tripped or emergency-stopped, commands are not forwarded and the robot holds.

The wrapped robot's ``hold`` and ``latest_observation`` are called from the watchdog thread
and from ``estop`` callers, concurrently with the control loop's calls.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import numpy as np
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Observation, Robot, RobotError, RobotSpec

log = logging.getLogger(__name__)

CLAMP_KINDS = ("action_limits", "max_delta", "workspace")


def _vector(name: str, value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        v = np.full(n, float(v))
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (the action's), got {v.shape}")
    if np.any(np.isnan(v)):
        raise ValueError(f"{name} must not contain NaN, got {v.tolist()}")
    return v


@dataclass
class SafetyLimits:
    """Limits in action coordinates. Array fields take a scalar (every element) or a (Da,)
    array; ``action_low`` / ``action_high`` left ``None`` come from the robot spec."""

    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    max_delta: float | np.ndarray | None = None      # max change per element per control tick
    workspace_low: np.ndarray | None = None
    workspace_high: np.ndarray | None = None
    position_obs: tuple[str, int, int] | None = None  # (obs key, a, b): measured position = obs[key][a:b]

    def resolve(self, spec: RobotSpec) -> SafetyLimits:
        """A checked copy for ``spec`` with every array field of shape (Da,); raises ValueError."""
        if len(spec.action.shape) != 1:
            raise ValueError(f"SafetyLimits needs a 1-D action, got shape {spec.action.shape}")
        n = spec.action.shape[0]
        low = _vector("action_low", self.action_low if self.action_low is not None else spec.action.low, n)
        high = _vector("action_high", self.action_high if self.action_high is not None else spec.action.high, n)
        low = np.full(n, -np.inf) if low is None else low
        high = np.full(n, np.inf) if high is None else high
        if np.any(low > high):
            raise ValueError(f"action_low must be <= action_high, got {low.tolist()} > {high.tolist()}")
        max_delta = _vector("max_delta", self.max_delta, n)
        if max_delta is not None and np.any(max_delta <= 0):
            raise ValueError(f"max_delta must be > 0, got {max_delta.tolist()}")
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ValueError("give both workspace_low and workspace_high, or neither")
        ws_low = _vector("workspace_low", self.workspace_low, n)
        ws_high = _vector("workspace_high", self.workspace_high, n)
        if ws_low is not None and np.any(ws_low > ws_high):
            raise ValueError(f"workspace_low must be <= workspace_high, got {ws_low.tolist()} > {ws_high.tolist()}")
        position_obs = self.position_obs
        if position_obs is not None:
            key, a, b = position_obs
            feature = spec.observation.get(key)
            if feature is None:
                raise ValueError(f"position_obs key {key!r} is not an observation; have {list(spec.observation)}")
            if len(feature.shape) != 1 or not 0 <= a < b <= feature.shape[0] or b - a != n:
                raise ValueError(f"position_obs {position_obs} must select {n} elements of the 1-D "
                                 f"observation {key!r} of shape {feature.shape}")
            position_obs = (str(key), int(a), int(b))
        return SafetyLimits(low, high, max_delta, ws_low, ws_high, position_obs)


class SafetyFilter:
    """A Robot that clamps commands, holds on a stale sensor or stalled loop, and e-stops.

    ``clamp_counts`` counts commands changed by each clamp kind (:data:`CLAMP_KINDS`).
    """

    def __init__(self, robot: Robot, limits: SafetyLimits | None = None, clock=None,
                 watchdog_timeout_s: float | None = 0.5):
        if watchdog_timeout_s is not None and not watchdog_timeout_s > 0:
            raise ValueError(f"watchdog_timeout_s must be > 0 or None, got {watchdog_timeout_s}")
        self.robot = robot
        self._limits = limits or SafetyLimits()
        # resolved against the spec now, or at connect() for a robot that learns its spec there
        self.limits: SafetyLimits | None = None
        if getattr(robot, "spec", None) is not None:
            self.limits = self._limits.resolve(robot.spec)
        self.clock = clock if clock is not None else MonotonicClock()
        self.watchdog_timeout_s = watchdog_timeout_s
        self.clamp_counts = {k: 0 for k in CLAMP_KINDS}
        self.refused = 0                    # commands not forwarded (estop, watchdog trip)
        self._lock = threading.Lock()       # every command / hold forwarded to the robot
        self._last_applied: np.ndarray | None = None   # the last command forwarded
        self._held = True                                 # held since that command (or at start)
        self._estop_reason: str | None = None
        self._trip_reason: str | None = None
        self._trip_time = 0.0
        self._last_heartbeat: float | None = None      # None: watchdog disarmed
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._last_obs: Observation | None = None
        self._last_obs_at = 0.0

    # --- state -------------------------------------------------------------------------
    @property
    def spec(self) -> RobotSpec:
        return self.robot.spec

    @property
    def tripped(self) -> bool:
        return self._trip_reason is not None

    @property
    def trip_reason(self) -> str | None:
        return self._trip_reason

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> str | None:
        return self._estop_reason

    # --- Robot -------------------------------------------------------------------------
    def connect(self) -> None:
        self.robot.connect()
        if self.limits is None:
            self.limits = self._limits.resolve(self.robot.spec)
        self._start_watchdog()

    def reset(self, seed: int | None = None) -> Observation:
        """Start an episode; refused while emergency-stopped. Clears a watchdog trip and
        disarms the watchdog until the next ``send_action`` / ``heartbeat``."""
        if self.limits is None:
            raise RobotError("SafetyFilter: not connected")
        with self._lock:
            if self.estopped:
                raise RobotError(f"emergency stop ({self._estop_reason}): reset refused; clear_estop() first")
            self._last_heartbeat = None
            if self._trip_reason is not None:
                log.info("watchdog re-armed by reset (was: %s)", self._trip_reason)
                self._trip_reason = None
            self._last_applied, self._held = None, True
            self._last_obs = None             # the max-delta reference is read after the reset, not before
        obs = self.robot.reset(seed)          # not under the lock: an estop must not wait for it
        if self.estopped:                     # stopped while the robot was resetting
            self.hold()
            raise RobotError(f"emergency stop ({self._estop_reason}) during reset")
        self._start_watchdog()
        return obs

    def latest_observation(self) -> Observation | None:
        return self._seen(self.robot.latest_observation())

    def _seen(self, obs: Observation | None) -> Observation | None:
        """Remember the newest observation the caller read (and when): the watchdog and the
        max-delta reference use it instead of asking a possibly remote robot again."""
        self._last_obs, self._last_obs_at = obs, self.clock.now()
        return obs

    def _observation(self) -> Observation | None:
        """The observation the loop read moments ago if it is reading them (no extra round trip
        to a remote robot, no waiting on its lock), else a fresh one from the robot."""
        if self._last_obs is not None and self.clock.now() - self._last_obs_at < (self.watchdog_timeout_s or 0.5) / 2:
            return self._last_obs
        return self.robot.latest_observation()

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self.heartbeat()
        if self.limits is None:
            raise RobotError("SafetyFilter: not connected")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.spec.action.shape:
            raise RobotError(f"action shape {a.shape} != {self.spec.action.shape}")
        with self._lock:
            if self.estopped or self.tripped:
                return self._refuse()
            if not np.all(np.isfinite(a)):
                self._hold_locked()
                raise RobotError(f"action must be finite, got {a.tolist()}; robot held")
            command = self._clamp(a)
            if not np.all(np.isfinite(command)):     # a NaN measured position as the max-delta reference, or
                self._hold_locked()                  # an action beyond the robot's dtype with no limit to clip it
                raise RobotError(f"the command for action {a.tolist()} is not finite ({command.tolist()}: the measured "
                                 f"position is not finite, or the action is beyond {self.spec.action.dtype}); robot held")
            applied = np.asarray(self.robot.send_action(command))
            self._last_applied, self._held = applied.astype(np.float64), False
            return applied

    def heartbeat(self) -> None:
        """Tell the watchdog the control loop is alive (``send_action`` does this too)."""
        self._last_heartbeat = self.clock.now()

    def hold(self) -> None:
        with self._lock:
            self._hold_locked()

    def disconnect(self) -> None:
        """Stop the watchdog, hold, then disconnect the robot."""
        self._watchdog_stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
        self._watchdog = None
        try:
            with self._lock:
                self._hold_locked()
        finally:
            self.robot.disconnect()

    # --- emergency stop ----------------------------------------------------------------
    def estop(self, reason: str = "") -> None:
        """Latching emergency stop: hold now; refuse every command until :meth:`clear_estop`.
        When it returns, no command forwarded by a concurrent ``send_action`` can still land.
        A driver with its own ``estop()`` (e.g. an arm that turns its torque off) gets it called
        after the hold."""
        first = not self.estopped
        self._estop_reason = reason or "estop"
        try:
            self.robot.hold()            # at once, even while a send_action is in flight
        finally:
            with self._lock:             # after any in-flight send_action: hold again, last
                self._hold_locked()
                driver_estop = getattr(self.robot, "estop", None)
                if callable(driver_estop):
                    driver_estop()
        if first:
            log.error("EMERGENCY STOP: %s", self._estop_reason)

    def clear_estop(self) -> None:
        with self._lock:
            if self._estop_reason is not None:
                log.warning("emergency stop cleared (was: %s)", self._estop_reason)
            self._estop_reason = None

    # --- internals ---------------------------------------------------------------------
    def _hold_locked(self) -> None:
        self.robot.hold()
        self._held = True

    def _refuse(self) -> np.ndarray:
        """Hold (once) instead of commanding; report the hold: the measured position, else
        the last applied command, else NaN (unknown)."""
        self.refused += 1
        if not self._held:
            self._hold_locked()
        position = self._measured_position()
        if position is not None:
            reported = position
        elif self._last_applied is not None:
            reported = self._last_applied
        else:
            reported = np.full(self.spec.action.shape, np.nan)
        return reported.astype(self.spec.action.dtype)

    def _measured_position(self) -> np.ndarray | None:
        if self.limits.position_obs is None:
            return None
        obs = self._observation()
        if obs is None:
            return None
        key, a, b = self.limits.position_obs
        return np.asarray(obs.values[key], dtype=np.float64)[a:b].copy()

    def _clamp(self, a: np.ndarray) -> np.ndarray:
        lim = self.limits
        out = self._count("action_limits", a, np.clip(a, lim.action_low, lim.action_high))
        if lim.max_delta is not None:
            ref = self._last_applied if not self._held else self._measured_position()
            if ref is None:                   # held, position unknown: from the last command
                ref = self._last_applied
            if ref is not None:
                out = self._count("max_delta", out, np.clip(out, ref - lim.max_delta, ref + lim.max_delta))
        if lim.workspace_low is not None:
            out = self._count("workspace", out, np.clip(out, lim.workspace_low, lim.workspace_high))
        with np.errstate(over="ignore"):      # beyond the dtype's range: infinite, refused by send_action
            return out.astype(self.spec.action.dtype)

    def _count(self, kind: str, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        if not np.array_equal(before, after):
            if self.clamp_counts[kind] == 0:
                log.warning("safety clamp %s: %s -> %s (logged once per kind; see clamp_counts)",
                            kind, before.tolist(), after.tolist())
            self.clamp_counts[kind] += 1
        return after

    # --- watchdog ----------------------------------------------------------------------
    def _start_watchdog(self) -> None:
        if self.watchdog_timeout_s is None or self._watchdog is not None:
            return
        self._watchdog_stop.clear()
        self._watchdog = threading.Thread(target=self._watch, name="SafetyFilter.watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        period = self.watchdog_timeout_s / 5
        while not self._watchdog_stop.wait(period):
            try:
                self._check_watchdog()
            except Exception:
                log.exception("watchdog check failed")

    def _check_watchdog(self) -> None:
        heartbeat = self._last_heartbeat
        if heartbeat is None:                 # disarmed until the loop runs
            return
        timeout = self.watchdog_timeout_s
        try:
            obs = self._observation()
            obs_error = None
        except Exception as e:  # noqa: BLE001
            obs, obs_error = None, e
        now = self.clock.now()
        if obs_error is not None:
            stale = f"reading the observation failed: {obs_error!r}"
        elif obs is None:
            stale = "no observation"
        elif not math.isfinite(obs.t_capture):
            stale = f"observation capture time is {obs.t_capture}"
        elif now - obs.t_capture > timeout:
            stale = f"observation is {now - obs.t_capture:.3f} s old (> {timeout} s)"
        else:
            stale = None
        stalled = (f"no send_action/heartbeat for {now - heartbeat:.3f} s (> {timeout} s)"
                   if now - heartbeat > timeout else None)
        if self._trip_reason is None:
            reason = stale or stalled
            if reason is not None:
                with self._lock:
                    if self._last_heartbeat is None:   # reset meanwhile
                        return
                    log.warning("watchdog tripped, holding: %s", reason)
                    try:
                        self._hold_locked()
                    finally:                            # tripped once held (or the hold failed)
                        self._trip_reason, self._trip_time = reason, now
        elif stale is None and stalled is None and heartbeat > self._trip_time:
            with self._lock:
                if self._trip_reason is not None:
                    log.info("watchdog re-armed: observations fresh and heartbeat back (was: %s)",
                             self._trip_reason)
                    self._trip_reason = None
