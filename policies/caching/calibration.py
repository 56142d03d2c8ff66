"""BAC calibration: record every residual branch at every sampling step, then schedule each branch.

The policy samples chunks for calibration observations (drawn from the training data) with
its normal, uncached sampler while a recording branch cache keeps each branch's residual
output at each step. Per branch and per calibration sample the outputs at steps ``i`` and
``j`` are compared -- cosine similarity of the flattened features by default, or the negated
mean L1 / squared distance -- and the matrices are averaged over the samples (the reference
calibrates on a single demonstration; averaging over many observations gives schedules that
hold across the task). Volatility, used by the Bubbling Union, is the mean L1 distance
between a branch's outputs at two different steps relative to their mean magnitude (relative,
so that branches with large outputs do not win by scale alone).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from .block_cache import branch_keys
from .bubbling_union import bubbling_union, most_volatile
from .cache_scheduler import optimal_update_steps, schedule_value
from .schedule import CacheSchedule, ScheduleError, evenly_spaced_steps

METRICS = ("cosine", "l1", "mse")


class _Recorder:
    """A branch cache that computes every branch and keeps its output per step, flattened per sample."""

    def __init__(self):
        self.features: dict[str, list[torch.Tensor]] = defaultdict(list)

    def prepare(self, levels) -> bool:
        return False

    def clear(self) -> None:
        self.features.clear()

    def residual(self, key, step, x, compute):
        out = compute()
        self.features[key].append(out.detach().float().flatten(1))
        return out


@dataclass
class BranchStatistics:
    levels: list[float]
    similarity: dict[str, np.ndarray]   # branch -> (n, n), mean over calibration samples
    volatility: dict[str, float]        # branch -> mean relative L1 change between two steps
    samples: int
    metric: str


def pairwise(features: torch.Tensor, metric: str) -> torch.Tensor:
    """``features`` (B, n, F) -> (B, n, n) similarities between steps (higher = more alike)."""
    if metric == "cosine":
        unit = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return unit @ unit.transpose(1, 2)
    if metric == "l1":
        return -torch.cdist(features, features, p=1) / features.shape[-1]
    if metric == "mse":
        return -torch.cdist(features, features, p=2).square() / features.shape[-1]
    raise ScheduleError(f"metric must be one of {METRICS}, got {metric!r}")


def relative_volatility(features: torch.Tensor) -> torch.Tensor:
    """(B, n, F) -> (B,): mean over step pairs i != j of mean |F_i - F_j|, over mean |F|."""
    n = features.shape[1]
    if n < 2:
        return torch.zeros(features.shape[0])
    dist = torch.cdist(features, features, p=1) / features.shape[-1]
    mean_pair = dist.sum((1, 2)) / (n * (n - 1))
    return mean_pair / features.abs().mean((1, 2)).clamp_min(1e-12)


@torch.no_grad()
def branch_statistics(policy, observations: Mapping[str, torch.Tensor], metric: str = "cosine",
                      batch_size: int = 16, seed: int = 0, noise: torch.Tensor | None = None,
                      progress: bool = False) -> BranchStatistics:
    """Sample a chunk for every observation (each key (N, To, ...), task units) with the policy's
    own sampler, recording each branch's output at each step; returns the averaged matrices.
    ``noise`` (N, Tp, Da) fixes the start samples (default: drawn with ``seed``)."""
    if metric not in METRICS:
        raise ScheduleError(f"metric must be one of {METRICS}, got {metric!r}")
    denoiser = policy.denoiser
    keys = branch_keys(denoiser)
    levels = [float(v) for v in policy.process.levels()]
    first = next(iter(observations.values()))
    total = first.shape[0]
    if total < 1:
        raise ScheduleError("calibration needs at least one observation")
    generator = torch.Generator(device=first.device).manual_seed(seed)
    sums: dict[str, torch.Tensor] = {}
    vol_sums: dict[str, float] = defaultdict(float)
    saved, recorder = denoiser.branch_cache, _Recorder()
    policy.eval()
    denoiser.branch_cache = recorder
    try:
        starts = range(0, total, batch_size)
        for start in tqdm(starts, desc=f"calibrating {len(levels)} steps", disable=not progress):
            batch = {k: v[start: start + batch_size] for k, v in observations.items()}
            start_noise = None if noise is None else noise[start: start + batch_size]
            policy.predict_chunk(batch, generator=generator, noise=start_noise)
            for key in keys:
                steps = recorder.features[key]
                if len(steps) != len(levels):
                    raise RuntimeError(f"branch {key} ran {len(steps)} times in a {len(levels)}-step chunk")
                feats = torch.stack(steps, dim=1).cpu()                       # (B, n, F)
                sims = pairwise(feats, metric).sum(0).double()
                sums[key] = sims if key not in sums else sums[key] + sims
                vol_sums[key] += float(relative_volatility(feats).sum())
            recorder.clear()
    finally:
        denoiser.branch_cache = saved
    return BranchStatistics(levels, {k: (sums[k] / total).numpy() for k in keys},
                            {k: vol_sums[k] / total for k in keys}, total, metric)


def shared_schedule(stats: BranchStatistics, updates: int) -> CacheSchedule:
    """One set of ``updates`` steps for every branch: the dynamic program on the branches' mean
    similarity matrix. Calibrated like BAC, but the branches stay in step: at an update step the
    whole network is recomputed, so no branch reads another's stale output. The schedule is
    identical across branches, so the Bubbling Union would add nothing."""
    mean = sum(stats.similarity.values()) / len(stats.similarity)
    steps = optimal_update_steps(mean, updates)
    info = {"metric": stats.metric, "calibration_samples": stats.samples,
            "objective": round(schedule_value(mean, steps), 6),
            "uniform_objective": round(schedule_value(mean, evenly_spaced_steps(len(stats.levels), updates)), 6)}
    return CacheSchedule("shared", list(stats.levels), {k: list(steps) for k in stats.similarity}, updates, info)


def bac_schedule(stats: BranchStatistics, updates: int, bubbling_blocks: int = 3) -> CacheSchedule:
    """Per-branch optimal update steps (exact DP), then the Bubbling Union over the
    ``bubbling_blocks`` most volatile branches (0: no union)."""
    steps = {k: optimal_update_steps(s, updates) for k, s in stats.similarity.items()}
    selected = most_volatile(stats.volatility, bubbling_blocks)
    final = bubbling_union(steps, selected)
    uniform = evenly_spaced_steps(len(stats.levels), updates)
    info = {"metric": stats.metric, "calibration_samples": stats.samples, "bubbling_blocks": bubbling_blocks,
            "bubbled": selected, "volatility": {k: round(v, 6) for k, v in stats.volatility.items()},
            "objective": {k: round(schedule_value(stats.similarity[k], v), 6) for k, v in steps.items()},
            "uniform_objective": {k: round(schedule_value(s, uniform), 6) for k, s in stats.similarity.items()}}
    return CacheSchedule("bac", list(stats.levels), final, updates, info)
