"""``cadence cache``: schedule block-wise caching for a trained transformer policy.

Both calibrated methods run the policy uncached on ``calibration`` observation windows from
its training data and record every residual branch at every sampling step.
``method=bac`` (BAC as published) picks each branch's ``updates`` (M) recompute steps by the
exact dynamic program on its own similarity matrix, then applies the Bubbling Union to the
``bubbling_blocks`` most volatile branches. ``method=shared`` (the default) runs the dynamic
program on the branches' mean similarity and gives every branch the same M steps, so the
network is always recomputed as a whole; it had the lower action error at equal cost in
``cadence bench cache`` on the default task and on PushT. ``method=uniform`` recomputes every
branch at M evenly spaced steps. One schedule per entry of ``sample_steps``; they are
written to ``<checkpoint>/cache_schedule.json`` (schedules for other step counts already
there are kept) and used from then on wherever the checkpoint is loaded
(``block_cache=false`` in ``cadence eval`` turns them off).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from omegaconf import DictConfig

from cadence.calibration_data import calibration_observations, stack_observations
from cadence.markdown_table import markdown_table
from cadence.policies.caching import CacheSchedule, uniform_schedule
from cadence.policies.caching.block_cache import branch_keys
from cadence.policies.caching.schedule import ScheduleError
from cadence.policies.caching.calibration import bac_schedule, branch_statistics, shared_schedule

METHODS = ("bac", "shared", "uniform")


def budgets(sample_steps: Sequence[int], updates: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs (steps, M): ``updates`` parallel to ``sample_steps``, or one value for all."""
    updates = list(updates)
    if len(updates) == 1:
        updates = updates * len(sample_steps)
    if len(updates) != len(sample_steps):
        raise ScheduleError(f"updates needs one value or one per entry of sample_steps {list(sample_steps)}, "
                            f"got {updates}")
    if len(set(int(s) for s in sample_steps)) != len(sample_steps):
        raise ScheduleError(f"sample_steps has a step count twice: {list(sample_steps)}")
    for steps, m in zip(sample_steps, updates):
        if not 1 <= int(m) <= int(steps):
            raise ScheduleError(f"updates must be in 1..{steps} for {steps} sampling steps, got {m}")
    return [(int(s), int(m)) for s, m in zip(sample_steps, updates)]


def make_schedules(policy, method: str, pairs: Sequence[tuple[int, int]], observations: Mapping[str, torch.Tensor],
                   metric: str = "cosine", bubbling_blocks: int = 3, batch_size: int = 16, seed: int = 0,
                   progress: bool = False) -> list[CacheSchedule]:
    """One schedule per (sampling steps, M); BAC calibrates on ``observations`` (each key (N, To, ...))."""
    if method not in METHODS:
        raise ScheduleError(f"method must be one of {METHODS}, got {method!r}")
    keys = branch_keys(policy.denoiser)
    original, out = policy.process, []
    try:
        for steps, m in pairs:
            policy.process = original.with_steps(steps)
            if method == "uniform":
                out.append(uniform_schedule(keys, policy.process.levels(), m))
                continue
            stats = branch_statistics(policy, observations, metric, batch_size, seed, progress=progress)
            out.append(bac_schedule(stats, m, bubbling_blocks) if method == "bac" else shared_schedule(stats, m))
    finally:
        policy.process = original
    return out


def schedule_table(schedules: Sequence[CacheSchedule], branches: int) -> str:
    rows = []
    for s in schedules:
        full = branches * s.sample_steps
        rows.append([s.method, str(s.sample_steps), str(s.budget), f"{s.branch_evaluations()} / {full}",
                     f"{s.branch_evaluations() / full:.3f}", ", ".join(s.info.get("bubbled", [])) or "-"])
    return markdown_table(["method", "sampling steps", "M", "branch evaluations / uncached", "fraction",
                           "bubbled branches"], rows)


def run(cfg: DictConfig) -> list[CacheSchedule]:
    from cadence.cache_file import write_schedules
    from cadence.checkpoint import load_policy, resolve_checkpoint_dir
    from cadence.device import resolve_device

    device = resolve_device(cfg.device)
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    policy, train_cfg, meta = load_policy(ckpt, device, block_cache=False)
    keys = branch_keys(policy.denoiser)
    steps = list(cfg.sample_steps) if cfg.sample_steps else [int(policy.process.sample_steps)]
    pairs = budgets(steps, cfg.updates)
    obs = None
    if cfg.method != "uniform":
        obs = stack_observations(calibration_observations(train_cfg, cfg.calibration, seed=cfg.seed), device)
    schedules = make_schedules(policy, cfg.method, pairs, obs, cfg.metric, cfg.bubbling_blocks, cfg.batch_size,
                               cfg.seed, progress=True)
    path = write_schedules(ckpt, schedules, step=meta.get("step"))
    print(schedule_table(schedules, len(keys)))
    print(f"wrote {path}")
    return schedules
