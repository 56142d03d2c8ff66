"""A robot that replays recorded episodes: rehearse the whole runtime on your own data before a
robot moves (``cadence run robot=replay``).

Each ``reset`` starts the next of the chosen episodes of an episode store (in the order given,
then again from the first). Recorded step ``k`` becomes the newest observation ``k / rate``
seconds after the reset (the recorded rate by default), stamped with that time, until the
episode's last step, after which the observation says ``done``. Observation keys a task derives
from stored ones (``slices``, ``{name: (key, start, stop)}`` on the last axis) are served
sliced. Actions change nothing — the recording goes on regardless — but each one is compared
with the recorded action of the step it is for: the robot's first step at least ``lead_s``
after it arrives (the control loop's ``action_lead_s``). :meth:`report` gives the L1 error per
dimension in task units over the steps that received an action, how many steps received none
(the loop held or was late), and how many episodes ended before their recording did.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Feature, Observation, RobotError, RobotSpec


class ReplayRobot:
    def __init__(self, store: str | Path, obs_keys: list[str], action_key: str = "action",
                 episodes: list[int] | None = None, rate_hz: float | None = None, clock=None,
                 slices: dict | None = None, lead_s: float = 0.0):
        self.store = EpisodeStore.open(store)
        self.slices = {k: (str(v[0]), int(v[1]), int(v[2])) for k, v in (slices or {}).items() if k in obs_keys}
        self._stored = {k: self.slices[k][0] if k in self.slices else k for k in obs_keys}
        missing = [k for k in [*self._stored.values(), action_key] if k not in self.store.keys]
        if missing:
            raise StoreError(f"{self.store.path}: the replay needs keys {missing}; the store has {self.store.keys}")
        n = self.store.n_episodes
        self.episodes = list(range(n)) if episodes is None else [int(e) for e in episodes]
        bad = [e for e in self.episodes if not 0 <= e < n]
        if not self.episodes or bad:
            raise StoreError(f"{self.store.path}: robot.episodes {bad or '[]'} are not among its {n} episodes")
        rate = rate_hz or self.store.fps
        if not rate or rate <= 0:
            raise StoreError(f"{self.store.path}: records no fps; set robot.rate_hz=...")
        self.obs_keys, self.action_key, self.clock = list(obs_keys), action_key, clock or MonotonicClock()
        self.lead_s = float(lead_s)
        features = self.store.features
        self.spec = RobotSpec(f"replay:{self.store.path.name}",
                              {k: Feature(self._shape(k, features), features[self._stored[k]].dtype)
                               for k in self.obs_keys},
                              Feature(features[action_key].shape, "float32"), float(rate))
        self._lock = threading.Lock()
        self._resets = 0
        self._episode: dict[str, np.ndarray] | None = None
        self._index = -1
        self._t0 = 0.0
        self._sent: dict[int, np.ndarray] = {}
        self._errors: list[np.ndarray] = []          # |sent - recorded| per step that got an action
        self._missed = 0
        self._cut_short = 0
        self._connected = False

    # --- Robot -------------------------------------------------------------------------
    def connect(self) -> None:
        self._connected = True

    def reset(self, seed: int | None = None) -> Observation:
        self._require()
        with self._lock:
            self._close_episode()
            self._index = self.episodes[self._resets % len(self.episodes)]
            self._resets += 1
            self._episode = self.store.episode(self._index, sorted({*self._stored.values(), self.action_key}))
            self._t0 = self.clock.now()
            self._sent = {}
            return self._observation(0)

    def latest_observation(self) -> Observation | None:
        self._require()
        with self._lock:
            if self._episode is None:
                return None
            return self._observation(min(self._length - 1, int((self.clock.now() - self._t0) * self.spec.rate_hz)))

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._require()
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.spec.action.shape or not np.all(np.isfinite(a)):
            raise RobotError(f"{self.spec.name}: action must be finite of shape {self.spec.action.shape}, got {a.tolist()}")
        with self._lock:
            if self._episode is not None:
                step = math.ceil((self.clock.now() + self.lead_s - self._t0) * self.spec.rate_hz - 1e-9)
                if step < self._length:
                    self._sent[step] = a.copy()
        return a.astype(np.float32)

    def hold(self) -> None:
        self._require()

    def disconnect(self) -> None:
        with self._lock:
            self._close_episode()
        self._connected = False

    # --- the rehearsal's result ------------------------------------------------------------
    def report(self) -> dict:
        """Actions against the recording over every episode so far (the current one included)."""
        with self._lock:
            errors = self._errors + self._pending_errors()
            missed = self._missed + self._pending_missed()
        steps = int(sum(len(e) for e in errors))
        l1 = np.concatenate(errors) if steps else np.zeros((0, *self.spec.action.shape))
        return {"episodes": self._resets, "episodes_cut_short": self._cut_short,
                "steps_compared": steps, "steps_without_action": int(missed),
                "action_l1": float(l1.mean()) if steps else float("nan"),
                "action_l1_per_dim": l1.mean(0).tolist() if steps else []}

    # --- internals ---------------------------------------------------------------------------
    @property
    def _length(self) -> int:
        return len(self._episode[self.action_key])

    def _shape(self, key: str, features) -> tuple[int, ...]:
        if key not in self.slices:
            return features[key].shape
        parent, start, stop = self.slices[key]
        width = features[parent].shape[-1] if features[parent].shape else 0
        if not 0 <= start < stop <= width:
            raise StoreError(f"{self.store.path}: obs slice {key} = [{parent}, {start}, {stop}] is outside "
                             f"{parent}'s last axis of size {width}")
        return (*features[parent].shape[:-1], stop - start)

    def _value(self, key: str, k: int) -> np.ndarray:
        if key not in self.slices:
            return np.asarray(self._episode[key][k])
        parent, start, stop = self.slices[key]
        return np.asarray(self._episode[parent][k][..., start:stop])

    def _observation(self, k: int) -> Observation:
        done = k >= self._length - 1 and self.clock.now() - self._t0 >= (self._length - 1) / self.spec.rate_hz
        return Observation({key: self._value(key, k) for key in self.obs_keys},
                           self._t0 + k / self.spec.rate_hz, k,
                           {"done": bool(done), "episode": self._index, "is_success": False})

    def _reached(self) -> int:
        """Steps of the current episode whose time has come."""
        return min(self._length, int((self.clock.now() - self._t0) * self.spec.rate_hz) + 1)

    def _pending_errors(self) -> list[np.ndarray]:
        if self._episode is None:
            return []
        reached = self._reached()
        steps = sorted(s for s in self._sent if s < reached)
        if not steps:
            return []
        recorded = np.asarray(self._episode[self.action_key], dtype=np.float64)[steps]
        return [np.abs(np.stack([self._sent[s] for s in steps]) - recorded)]

    def _pending_missed(self) -> int:
        if self._episode is None:
            return 0
        return sum(1 for s in range(1, self._reached()) if s not in self._sent)   # step 0 precedes any action

    def _close_episode(self) -> None:
        if self._episode is not None and self._reached() < self._length:
            self._cut_short += 1
        self._errors += self._pending_errors()
        self._missed += self._pending_missed()
        self._episode = None

    def _require(self) -> None:
        if not self._connected:
            raise RobotError(f"{self.spec.name}: not connected")
