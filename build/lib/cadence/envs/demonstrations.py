"""Scripted-expert demonstrations for the tasks that have an expert.

For the bimodal reach task, episodes come in pairs that share a start and a goal: one goes
left, the other right. Choosing the side at random per episode would let the random start
and goal offsets predict the side, and a plain regression policy could then "solve" the
task without handling two modes (see shared/notes/default-task-feasibility.md).
"""
from __future__ import annotations

from typing import Iterator

import gymnasium as gym
import numpy as np

import cadence.envs  # noqa: F401  (registers the tasks)
from cadence.envs.bimodal_reach_expert import BimodalReachExpert

EXPERTS = ("bimodal_reach",)


def expert_episodes(expert: str, env_id: str, n_episodes: int, seed: int = 0,
                    env_kwargs: dict | None = None) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
    """Yield ``(episode, final_info)``; ``episode`` maps each observation key and ``action`` to
    a (T, ...) array, observations taken before each action."""
    if expert not in EXPERTS:
        raise ValueError(f"no scripted expert named {expert!r} (have {list(EXPERTS)})")
    env = gym.make(env_id, **(env_kwargs or {}))
    rng = np.random.default_rng(seed)
    policy = BimodalReachExpert(seed=seed)
    try:
        for i in range(n_episodes):
            if i % 2 == 0:
                obs, _ = env.reset(seed=int(rng.integers(2**31)))
                start, goal = env.unwrapped.position, env.unwrapped.goal.copy()
                sides = ["left", "right"] if rng.random() < 0.5 else ["right", "left"]
            else:
                obs, _ = env.reset(options={"start": start, "goal": goal})
            policy.reset(start, goal, sides[i % 2])
            steps: dict[str, list] = {k: [] for k in obs}
            steps["action"] = []
            done, info = False, {}
            while not done:
                action = policy.act()
                for k, v in obs.items():
                    steps[k].append(v)
                steps["action"].append(action)
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
            yield {k: np.stack(v) for k, v in steps.items()}, info
    finally:
        env.close()
