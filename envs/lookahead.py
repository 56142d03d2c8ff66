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
"""
from __future__ import annotations

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


def score_plans(env: gym.Env, scratch: gym.Env, plans: np.ndarray) -> np.ndarray:
    """``plans`` (K, T, Da) in the task's units -> scores (K,), each plan run in ``scratch`` from ``env``'s state."""
    state = lookahead_base(env).snapshot()
    scratch = lookahead_base(scratch)
    scores = np.empty(len(plans))
    for k, plan in enumerate(np.asarray(plans)):
        scratch.restore(state)
        scores[k] = _score(scratch, plan)
    return scores


def _score(env: gym.Env, plan: np.ndarray) -> float:
    for action in plan:
        _, _, terminated, truncated, info = env.step(action)
        if info.get("is_success", False):
            return SUCCESS
        if terminated:
            return FAILURE
        if truncated:
            break
    return float(env.progress())
