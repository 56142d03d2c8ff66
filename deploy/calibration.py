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

DEFAULT_STEPS = {"ddpm": [100, 50, 20, 10, 5, 2], "flow": [50, 20, 10, 5, 2, 1], "edm": [50, 20, 10, 5, 3],
                 "regression": [1], "anchor": [4, 2, 1], "streaming": [10, 5, 2, 1]}


def candidate_steps(policy_cfg, steps: list | None) -> list[int]:
    """Sampling steps to try, most first: the given ones, or the defaults plus the trained setting."""
    if policy_cfg.process == "regression":
        return [1]
    chosen = {int(s) for s in steps} if steps else {*DEFAULT_STEPS[policy_cfg.process], int(policy_cfg.sample_steps)}
    if policy_cfg.process == "ddpm":
        chosen = {s for s in chosen if s <= policy_cfg.diffusion_steps}
    if policy_cfg.process == "streaming":       # calls per replan: at most one chunk's band of timesteps
        chosen = {s for s in chosen if s <= _streaming_band(policy_cfg)}
    if policy_cfg.process == "anchor":          # the truncated schedule has start_step + 1 timesteps
        start = policy_cfg.anchor.start_step
        top = (policy_cfg.anchor.trunc_steps - 1 if start is None else start) + 1
        chosen = {s for s in chosen if s <= top}
    return sorted(chosen, reverse=True)


def reference_steps(policy_cfg, steps: int | None) -> int:
    if steps:
        return int(steps)
    if policy_cfg.process == "streaming":       # one call per timestep of the band (the paper's sampler)
        return _streaming_band(policy_cfg)
    # anchor: one step is the most accurate measured (PushT: later steps refine inputs the decoder never
    # trained on), so it is the reference the budget's action error is taken against
    return {"ddpm": int(policy_cfg.diffusion_steps), "flow": 100, "edm": 100, "regression": 1,
            "anchor": 1}[policy_cfg.process]


def _streaming_band(policy_cfg) -> int:
    from cadence.policies.processes.streaming import num_chunks
    h = num_chunks(policy_cfg.pred_horizon, policy_cfg.obs_horizon, policy_cfg.exec_horizon)
    return int(policy_cfg.diffusion_steps) // h


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
