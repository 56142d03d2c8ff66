"""Planned action sequences scored in a copy of the simulator (the search's ``oracle`` verifier).

An env that supports lookahead has three methods:

- ``snapshot()``: its whole state as plain arrays and numbers (picklable: a worker process of an
  async vector env sends it back);
- ``restore(state)``: puts an env of the same task exactly in that state, so that its next steps
  are the snapshotted env's (MuJoCo: bit for bit; PushT: pymunk's contact cache is not restored);
- ``progress()``: how far along the task is, higher better (PushT: its coverage reward; the
  reach task: minus the distance to the goal; robosuite: its shaped staged reward, in [0, 1]).

:func:`score_plans` runs each plan from the real env's state in a *scratch* env of the same task
(the real env is never stepped, so the episode goes on exactly as before) and scores it
:data:`SUCCESS` if the episode succeeds during the plan, :data:`FAILURE` if it ends otherwise
(e.g. a collision), else the progress where the plan leaves it.

:func:`run_branches` is the step under it: each plan run from a snapshot, returning its score, whether
the episode ended, its last observations and its state after, so that a caller can go on from
there (the policy's own next chunks after a candidate: :func:`cadence.envs.rollout.rollout`'s
``lookahead(plans, continue_with=..., chunks=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from cadence.errors import CadenceError

SUCCESS, FAILURE = 10.0, -10.0
METHODS = ("snapshot", "restore", "progress")


class LookaheadError(CadenceError, ValueError):
    """An env that cannot be copied for lookahead."""


def lookahead_base(env: gym.Env) -> gym.Env:
    """The unwrapped env, checked to have snapshot/restore/progress."""
    base = env.unwrapped
    missing = [name for name in METHODS if not callable(getattr(base, name, None))]
    if missing:
        raise LookaheadError(f"the oracle verifier runs each candidate in a copy of the simulator, but "
                             f"{type(base).__name__} has no {'/'.join(missing)} method (see cadence/envs/lookahead.py)")
    return base


@dataclass
class Branch:
    """Where one plan left a scratch env: its score (:data:`SUCCESS`, :data:`FAILURE` or the progress),
    whether the episode ended during it, the last observations of ``obs_keys`` (key -> (n, ...), n <=
    ``keep``, oldest first) and the env's state after it (None if it ended)."""
    score: float
    ended: bool
    obs: dict[str, np.ndarray]
    state: Any


def score_plans(env: gym.Env, scratch: gym.Env, plans: np.ndarray) -> np.ndarray:
    """``plans`` (K, T, Da) in the task's units -> scores (K,), each plan run in ``scratch`` from ``env``'s state."""
    state = lookahead_base(env).snapshot()
    return np.array([b.score for b in run_branches(scratch, [state] * len(plans), plans, with_state=False)])


def run_branches(scratch: gym.Env, states: Sequence[Any], plans: np.ndarray, obs_keys: Sequence[str] = (),
                 keep: int = 0, with_state: bool = True) -> list[Branch]:
    """Plan k (of (K, T, Da), task units) run in ``scratch`` from snapshot ``states[k]``; keeps the last
    ``keep`` observations of ``obs_keys`` and (``with_state``) the state each plan ends in."""
    base = lookahead_base(scratch)
    wrappers = _observation_wrappers(scratch)
    branches = []
    for state, plan in zip(states, np.asarray(plans)):
        base.restore(state)
        tail: list[dict] = []
        score, ended = None, False
        for action in plan:
            obs, _, terminated, truncated, info = base.step(action)
            if keep:
                for wrapper in wrappers:
                    obs = wrapper.observation(obs)
                obs = obs if isinstance(obs, dict) else {"obs": obs}
                tail = (tail + [{k: np.asarray(obs[k]) for k in obs_keys}])[-keep:]
            if info.get("is_success", False):
                score, ended = SUCCESS, True
            elif terminated:
                score, ended = FAILURE, True
            if ended or truncated:
                ended = True
                break
        obs_tail = {k: np.stack([o[k] for o in tail]) for k in obs_keys} if tail else {}
        branches.append(Branch(float(base.progress()) if score is None else score, ended, obs_tail,
                               base.snapshot() if with_state and not ended else None))
    return branches


def _observation_wrappers(env: gym.Env) -> list[gym.ObservationWrapper]:
    """``env``'s observation wrappers, innermost first: the base env is stepped directly (its own
    wrappers keep state, e.g. a time limit's step count, that a snapshot does not hold), and its
    observations are passed through these as ``env.step`` would."""
    wrappers = []
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.ObservationWrapper):
            wrappers.append(env)
        env = env.env
    return wrappers[::-1]
