"""Scripted-expert demonstrations for the tasks that have an expert.

Robosuite tasks (experts ``lift``, ``can``, ``square``; :mod:`cadence.envs.robosuite_experts`)
also record ``sim_state``, the flattened MuJoCo state before each action (robomimic's
``states``), so camera images can be rendered from the episodes afterwards
(:func:`renders_afterwards`, :class:`cadence.envs.robosuite_render.StateRenderer`).

For the bimodal reach task, episodes come in pairs that share a start and a goal: one goes
left, the other right. Choosing the side at random per episode would let the random start
and goal offsets predict the side, and a plain regression policy could then "solve" the
task without handling two modes (see shared/notes/default-task-feasibility.md).
"""
from __future__ import annotations

from typing import Callable, Iterator

import gymnasium as gym
import numpy as np

import cadence.envs  # noqa: F401  (registers the tasks)
from cadence.envs.bimodal_reach_expert import BimodalReachExpert

ROBOSUITE_EXPERTS = ("lift", "can", "square")
EXPERTS = ("bimodal_reach", *ROBOSUITE_EXPERTS)


def renders_afterwards(expert: str, env_kwargs: dict | None) -> bool:
    """Whether collection should run without cameras and render them from the recorded
    states afterwards (robosuite tasks with cameras: live rendering is several times slower)."""
    return expert in ROBOSUITE_EXPERTS and bool((env_kwargs or {}).get("cameras"))


def expert_episodes(expert: str, env_id: str, n_episodes: int, seed: int = 0,
                    env_kwargs: dict | None = None) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
    """Yield ``(episode, final_info)``; ``episode`` maps each observation key and ``action`` to
    a (T, ...) array, observations taken before each action."""
    if expert not in EXPERTS:
        raise ValueError(f"no scripted expert named {expert!r} (have {list(EXPERTS)})")
    if expert in ROBOSUITE_EXPERTS:
        yield from _robosuite_episodes(expert, env_id, n_episodes, seed, env_kwargs)
        return
    env = gym.make(env_id, **(env_kwargs or {}))
    rng = np.random.default_rng(seed)
    policy = BimodalReachExpert(seed=seed)
    try:
        for i in range(n_episodes):
            if i % 2 == 0:
                obs, _ = env.reset(seed=int(rng.integers(2**31)))
                start, goal = env.unwrapped.position, env.unwrapped.goal.copy()
                sides = ["left", "right"] if rng.random() < 0.5 else ["right", "left"]
                if env.unwrapped.side != "either":          # a one-sided variant: only its side
                    sides = [env.unwrapped.side] * 2
            else:
                obs, _ = env.reset(options={"start": start, "goal": goal})
            policy.reset(start, goal, sides[i % 2])
            yield _play(env, obs, policy.act)
    finally:
        env.close()


def _robosuite_episodes(expert: str, env_id: str, n_episodes: int, seed: int,
                        env_kwargs: dict | None) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
    """One episode per reset seed drawn from ``seed``; ``sim_state`` recorded with each step."""
    from cadence.envs.robosuite_experts import make_expert

    env = gym.make(env_id, **(env_kwargs or {}))
    rng = np.random.default_rng(seed)
    policy = make_expert(expert, seed=int(rng.integers(2**31)))
    try:
        for _ in range(n_episodes):
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            policy.reset(env.unwrapped)
            yield _play(env, obs, policy.act, sim_state=env.unwrapped.get_sim_state)
    finally:
        env.close()


def _play(env, obs: dict, act: Callable[[], np.ndarray],
          sim_state: Callable[[], np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Step ``env`` from ``obs`` with ``act()`` until the episode ends; returns the episode
    (each observation key, ``action``, and ``sim_state`` if given, all taken before each
    action) and the final info."""
    steps: dict[str, list] = {k: [] for k in obs}
    steps["action"] = []
    if sim_state is not None:
        steps["sim_state"] = []
    done, info = False, {}
    while not done:
        action = act()
        for k, v in obs.items():
            steps[k].append(v)
        if sim_state is not None:
            steps["sim_state"].append(sim_state())
        steps["action"].append(action)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return {k: np.stack(v) for k, v in steps.items()}, info
