"""Vector envs kept open between evaluations, so their worker processes start once per run.

A training run evaluates every ``eval_every`` steps; with ``eval.async_envs`` each evaluation
would otherwise start (and import the simulator in) a worker process per env. ``EnvPools``
hands out one vector env per key, built on first use, and closes them all at the end; an
evaluation that fails drops its env (a worker may have died) so the next builds a fresh one.
"""
from __future__ import annotations

from typing import Callable, Hashable

import gymnasium as gym

__all__ = ["EnvPools"]


class EnvPools:
    def __init__(self) -> None:
        self._envs: dict[Hashable, gym.vector.VectorEnv] = {}

    def get(self, key: Hashable, build: Callable[[], gym.vector.VectorEnv]) -> gym.vector.VectorEnv:
        """The env kept under ``key``, built with ``build()`` the first time."""
        if key not in self._envs:
            self._envs[key] = build()
        return self._envs[key]

    def drop(self, key: Hashable) -> None:
        """Close and forget the env under ``key`` (nothing if there is none)."""
        envs = self._envs.pop(key, None)
        if envs is not None:
            envs.close()

    def close(self) -> None:
        for key in list(self._envs):
            self.drop(key)

    def __len__(self) -> int:
        return len(self._envs)

    def __iter__(self):
        return iter(list(self._envs.values()))

    def __enter__(self) -> "EnvPools":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
