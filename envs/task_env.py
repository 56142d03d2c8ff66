"""The gymnasium env of a task config (``env_id`` + ``env_kwargs``, a suite member's one-hot ``task_id``)."""
from __future__ import annotations

import gymnasium as gym

import cadence.envs  # noqa: F401  (registers the tasks, also in a vector env's worker process)
from cadence.envs.task_id import TaskIdObservation
from cadence.errors import CadenceError


class EnvIdError(CadenceError, ValueError):
    """An env id that a file may not name."""


def check_env_id(env_id, where: str) -> str:
    """An env id read from a file (a checkpoint's config): a registered id, never ``module:id``,
    which gymnasium would import. The user's own command line may name any id."""
    if not isinstance(env_id, str) or ":" in env_id or env_id not in gym.registry:
        raise EnvIdError(f"{where} is {env_id!r}; a file may only name an env registered by cadence or an "
                         "installed package (never module:id, which would import code). To run your own env, "
                         "give env_id=... on the command line")
    return env_id


def make_env(task_cfg, render: bool = False) -> gym.Env:
    kwargs = dict(task_cfg.env_kwargs)
    if render:
        kwargs["render_mode"] = "rgb_array"
    env = gym.make(task_cfg.env_id, **kwargs)
    task_id = task_cfg.get("task_id")
    return TaskIdObservation(env, list(task_id)) if task_id else env


def env_module(task_cfg) -> str | None:
    """The module that defines the task's env class (its registered entry point), e.g. to
    import it once in a process that forks env workers; None for an env registered by callable."""
    entry = gym.spec(task_cfg.env_id).entry_point
    return entry.split(":")[0] if isinstance(entry, str) else None
