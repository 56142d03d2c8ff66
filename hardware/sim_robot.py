"""A simulated robot: any cadence gymnasium task stepped in real time behind the Robot seam.

A background thread steps the env on a fixed time grid ``t0 + k / rate_hz`` (it never
drifts; when it falls behind it skips to the next grid point and counts an overrun). At a
step time ``t`` it applies the newest command received at or before
``t - actuation_latency_s``; with none (at the start of an episode, or after :meth:`hold`)
it applies the task's hold action, latched at the pose where the hold began. The step
simulates one period, so its observation shows the state the *next* step acts on: it is
stamped with that step's time, ``t_capture = t + period``, and becomes visible
``sensor_latency_s`` after it (never before the state it shows exists). Observation ``seq``
``n`` is therefore stamped ``t0 + n * period``: the reset observation ``t0``, acted on by the
first step, which runs at ``t0``. An action the policy pairs with an observation is due at its
``t_capture``, as in training, where action ``t`` is applied to observation ``t``.
Once the episode is done the robot stops stepping and the final observation stays the latest.

Each env step simulates the task's own control period, so with ``rate_hz`` different from the
task's ``render_fps`` simulated time runs faster or slower than the clock.
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Any

import gymnasium as gym
import numpy as np
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Feature, Observation, RobotError, RobotSpec, checked_action

_SLEEP_CHUNK_S = 0.05   # longest uninterrupted sleep, so that disconnect() is prompt


def _bounds(space: gym.spaces.Box) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Per-element bounds of a 1-D Box, or None where they are not all finite."""
    if len(space.shape) != 1:
        return None, None
    low, high = np.asarray(space.low, float), np.asarray(space.high, float)
    return (tuple(low.tolist()) if np.all(np.isfinite(low)) else None,
            tuple(high.tolist()) if np.all(np.isfinite(high)) else None)


def _json_scalars(info: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, (bool, int, float, str, np.bool_, np.integer, np.floating)):
            out[str(key)] = value.item() if isinstance(value, np.generic) else value
    return out


class SimRobot:
    """A cadence gymnasium task run in real time as a :class:`~cadence.hardware.robot.Robot`.

    Counters (cumulative since construction): ``steps`` env steps, ``overruns`` times the
    thread fell behind the grid, ``held_steps`` steps that applied the hold action.
    """

    def __init__(self, env_id: str, env_kwargs: dict | None = None, rate_hz: float | None = None,
                 sensor_latency_s: float = 0.0, actuation_latency_s: float = 0.0,
                 obs_keys: list[str] | None = None, clock=None, name: str | None = None):
        import cadence.envs  # noqa: F401  (registers the cadence tasks)

        if sensor_latency_s < 0 or actuation_latency_s < 0:
            raise ValueError(f"latencies must be >= 0, got sensor {sensor_latency_s}, "
                             f"actuation {actuation_latency_s}")
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.sensor_latency_s, self.actuation_latency_s = float(sensor_latency_s), float(actuation_latency_s)
        self.clock = clock if clock is not None else MonotonicClock()
        self._env = env = gym.make(env_id, **self.env_kwargs)
        try:  # an env SimRobot cannot run is a bad env_id value: ValueError throughout
            if not callable(getattr(env.unwrapped, "hold_action", None)):
                raise ValueError(  # noqa: TRY004
                    f"{env_id}: {type(env.unwrapped).__name__} has no hold_action(); "
                    "SimRobot needs one to hold still (it never commands zeros)")
            obs_space, act_space = env.observation_space, env.action_space
            if not isinstance(obs_space, gym.spaces.Dict):
                raise ValueError(f"{env_id}: observation space must be a Dict, got {obs_space}")  # noqa: TRY004
            if not isinstance(act_space, gym.spaces.Box):
                raise ValueError(f"{env_id}: action space must be a Box, got {act_space}")  # noqa: TRY004
            keys = list(obs_keys) if obs_keys is not None else list(obs_space.spaces)
            missing = [k for k in keys if k not in obs_space.spaces]
            if missing:
                raise ValueError(f"{env_id}: unknown obs_keys {missing}; the task has {list(obs_space.spaces)}")
            if rate_hz is None:
                rate_hz = env.metadata.get("render_fps")
                if not rate_hz:
                    raise ValueError(f"{env_id}: no metadata['render_fps']; pass rate_hz")
            if not rate_hz > 0:
                raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        except Exception:
            env.close()
            raise
        self.obs_keys = keys
        self.rate_hz = float(rate_hz)
        self.period_s = 1.0 / self.rate_hz
        observation = {}
        for k in keys:
            space = obs_space[k]
            low, high = _bounds(space) if isinstance(space, gym.spaces.Box) else (None, None)
            observation[k] = Feature(tuple(space.shape), np.dtype(space.dtype).name, low, high)
        action_low, action_high = _bounds(act_space)
        self.spec = RobotSpec(name or f"sim:{env_id}", observation,
                              Feature(tuple(act_space.shape), np.dtype(act_space.dtype).name,
                                      action_low, action_high), self.rate_hz)
        self._low = np.asarray(act_space.low, np.float64)
        self._high = np.asarray(act_space.high, np.float64)
        self._act_dtype = np.dtype(act_space.dtype)

        self._env_lock = threading.Lock()   # env.reset / env.step; taken before _lock
        self._lock = threading.Lock()       # the small shared state below
        self._commands: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self._current: np.ndarray | None = None       # the command being applied
        self._hold_target: np.ndarray | None = None   # latched when a hold begins
        self._pending: collections.deque[Observation] = collections.deque()  # not yet visible
        self._visible: Observation | None = None
        self._t0 = 0.0
        self._k: int | None = None    # index of the next grid step; None: not stepping
        self._episode = 0                # bumped by reset: a step planned before it is dropped
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.steps = self.overruns = self.held_steps = 0

    # --- Robot -------------------------------------------------------------------------
    def connect(self) -> None:
        self._raise_thread_error()
        if self._env is None:
            self._env = gym.make(self.env_id, **self.env_kwargs)
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"SimRobot[{self.spec.name}]", daemon=True)
            self._thread.start()

    def reset(self, seed: int | None = None) -> Observation:
        self.connect()
        with self._env_lock:
            values, info = self._env.reset(seed=seed)
            t = self.clock.now()
            obs = self._observation(values, t, 0, info, False, False)
            with self._lock:
                self._commands.clear()
                self._current = self._hold_target = None
                self._pending.clear()
                self._visible = obs
                self._seq, self._t0, self._k = 0, t, 0
                self._episode += 1
        return obs

    def latest_observation(self) -> Observation | None:
        self._raise_thread_error()
        now = self.clock.now()
        with self._lock:
            while self._pending and now >= self._pending[0].t_capture + self.sensor_latency_s:
                self._visible = self._pending.popleft()
            return self._visible

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._raise_thread_error()
        if self._env is None:
            raise RobotError(f"{self.spec.name}: not connected")
        a = checked_action(self.spec.name, action, self.spec.action.shape)
        clipped = np.clip(a, self._low, self._high).astype(self._act_dtype)
        with self._lock:
            self._commands.append((self.clock.now(), clipped))
        return clipped.copy()

    def hold(self) -> None:
        """Hold the pose where the hold began: repeated calls while held keep that pose."""
        self._raise_thread_error()
        with self._lock:
            self._commands.clear()
            if self._current is not None:          # commanded until now: latch a new pose
                self._current = self._hold_target = None

    def disconnect(self) -> None:
        """Stop stepping and close the env; a stored stepping-thread error is raised afterwards."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        with self._env_lock:
            if self._env is not None:
                self._env.close()
                self._env = None
            with self._lock:
                self._k = None
        self._raise_thread_error(clear=True)

    # --- stepping thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    k, t0, episode = self._k, self._t0, self._episode
                if k is None:                          # no episode running
                    self._stop.wait(0.01)
                    continue
                t = t0 + k * self.period_s
                while not self._stop.is_set() and self.clock.now() < t:
                    self.clock.sleep_until(min(t, self.clock.now() + _SLEEP_CHUNK_S))
                if self._stop.is_set():
                    break
                self._step(episode, k, t0, t)
        except BaseException as e:  # noqa: BLE001  (re-raised on the next public call)
            self._error = e

    def _step(self, episode: int, k: int, t0: float, t: float) -> None:
        with self._env_lock:
            with self._lock:
                if (self._episode, self._k) != (episode, k):   # reset or disconnect meanwhile
                    return
                while self._commands and self._commands[0][0] <= t - self.actuation_latency_s:
                    self._current = self._commands.popleft()[1]
                    self._hold_target = None
                action, held = self._current, self._current is None
                if held:
                    if self._hold_target is None:
                        self._hold_target = np.asarray(self._env.unwrapped.hold_action(), self._act_dtype)
                    action = self._hold_target
            values, _, terminated, truncated, info = self._env.step(action)
            with self._lock:
                self._seq += 1
                self._pending.append(self._observation(values, t + self.period_s, self._seq, info, terminated,
                                                       truncated))
                self.steps += 1
                self.held_steps += held
                if terminated or truncated:
                    self._k = None
                    return
                k += 1
                now = self.clock.now()
                if now > t0 + k * self.period_s:       # fell behind: skip to the next grid point
                    self.overruns += 1
                    k = math.floor((now - t0) / self.period_s) + 1
                self._k = k

    def _observation(self, values: dict, t: float, seq: int, info: dict,
                     terminated: bool, truncated: bool) -> Observation:
        info = _json_scalars(info)
        info.setdefault("is_success", False)
        info.update(terminated=bool(terminated), truncated=bool(truncated),
                    done=bool(terminated or truncated))
        return Observation({k: np.array(values[k], copy=True) for k in self.obs_keys}, t, seq, info)

    def _raise_thread_error(self, clear: bool = False) -> None:
        error = self._error
        if error is not None:
            if clear:
                self._error = None
            raise RobotError(f"{self.spec.name}: simulation thread failed: {error!r}") from error
