"""Observations to calibrate on (latency budgets, latency benchmarks, block-cache calibration).

They are observation windows drawn from the training data when its store is on disk (they
cover the whole task), else the first observations of seeded episodes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


def calibration_observations(cfg, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` observation windows, each key (1, To, ...), from the run's data or its environment."""
    from cadence.task_suite import member_tasks
    task, policy = member_tasks(cfg.task)[0], cfg.policy    # a multitask suite: its first member
    if Path(task.dataset).exists():
        from cadence.datasets.window_dataset import WindowDataset
        data = WindowDataset.for_task(task, policy.obs_horizon, policy.pred_horizon)
        picks = np.random.default_rng(seed).choice(len(data), size=n, replace=len(data) < n)
        batch = data.batch(torch.from_numpy(picks))
        return [{k: batch[k][i: i + 1].numpy() for k in task.obs_keys} for i in range(n)]
    if task.env_id is None:
        from cadence.datasets.episode_store import StoreError
        raise StoreError(f"{task.dataset}: not found; a policy trained without a simulator calibrates on its "
                         "recordings: run from the folder it was trained in, where task.dataset leads")
    log.warning("%s not found: calibrating on the first observations of %d seeded episodes instead",
                task.dataset, n)
    from cadence.envs.task_env import make_env
    env = make_env(task)
    out = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        out.append({k: np.repeat(np.asarray(obs[k])[None, None], policy.obs_horizon, axis=1) for k in task.obs_keys})
    env.close()
    return out


def stack_observations(observations: Sequence[Mapping[str, np.ndarray]], device) -> dict[str, torch.Tensor]:
    """Observation windows (each key (1, To, ...)) -> one batch (N, To, ...)."""
    return {k: torch.as_tensor(np.concatenate([o[k] for o in observations]), device=device) for k in observations[0]}
