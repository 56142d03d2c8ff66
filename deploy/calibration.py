"""Observations to calibrate on (budget selection, latency benchmarks) and the step candidates.

Calibration observations are observation windows drawn from the training data when its store
is on disk (they cover the whole task), else the first observations of seeded episodes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def candidate_steps(process, steps: list | None) -> list[int]:
    """Sampling steps to try, most first: the given ones, or the process's ``budget_steps`` plus
    its own setting; only counts it can sample with (``process.check_steps``)."""
    chosen = {int(s) for s in steps} if steps else {*process.budget_steps, int(process.sample_steps)}
    return sorted((s for s in chosen if process.allows_steps(s)), reverse=True)


def reference_steps(process, steps: int | None) -> int:
    """The setting the budget's action error is measured against: ``steps``, or the process's own."""
    return int(steps) if steps else int(process.reference_steps())


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
