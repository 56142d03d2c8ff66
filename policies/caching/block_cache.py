"""The runtime of block-wise caching: recompute a branch at its update steps, reuse it between.

A :class:`BlockCache` is set as a transformer denoiser's ``branch_cache`` (see
:func:`install`). It holds one :class:`~.schedule.CacheSchedule` per sampling schedule (e.g.
DDPM-100 and DDIM-10 of the same policy); ``prepare(levels)``, called before every chunk by
``Policy.predict_chunk``, selects the one calibrated for those levels and fails with a clear
message when there is none. During a chunk, ``residual(key, step, x, compute)`` runs
``compute()`` at the branch's update steps and stores the result; at other steps it returns
the stored residual. Step 0 is an update step of every branch, so each chunk starts afresh;
the stored residuals are also dropped by ``clear()`` (the denoiser's ``.train()``).

With every step an update step the computation is exactly the uncached one.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .schedule import CacheSchedule, ScheduleError


class BlockCache:
    def __init__(self, schedules: Sequence[CacheSchedule] | CacheSchedule):
        schedules = [schedules] if isinstance(schedules, CacheSchedule) else list(schedules)
        if not schedules:
            raise ScheduleError("a block cache needs at least one schedule")
        counts = [s.sample_steps for s in schedules]
        if len(set(counts)) != len(counts):
            raise ScheduleError(f"one schedule per number of sampling steps, got steps {counts}")
        self.schedules = schedules
        self.active: CacheSchedule | None = None
        self._updates: dict[str, frozenset[int]] = {}
        self._stored: dict[str, torch.Tensor] = {}

    def check_branches(self, keys: Sequence[str]) -> None:
        for schedule in self.schedules:
            schedule.check_branches(keys)

    def schedule_for(self, levels: Sequence[float]) -> CacheSchedule:
        for schedule in self.schedules:
            if schedule.matches(levels):
                return schedule
        have = ", ".join(str(s.sample_steps) for s in self.schedules)
        raise ScheduleError(
            f"no cache schedule for this sampler ({len(levels)} steps, levels {_short(levels)}); the cache has "
            f"schedules for {have} steps. Calibrate one for it (cadence cache ... sample_steps=[{len(levels)}]) "
            "or run without the cache (block_cache=false)")

    def prepare(self, levels: Sequence[float]) -> bool:
        """Select the schedule for ``levels``; whether it changed."""
        schedule = self.schedule_for(levels)
        if schedule is self.active:
            return False
        self.active = schedule
        self._updates = {k: frozenset(v) for k, v in schedule.update_steps.items()}
        self._stored.clear()
        return True

    def clear(self) -> None:
        self._stored.clear()

    def residual(self, key: str, step: int, x: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.active is None:                     # not prepared for a schedule: run uncached
            return compute()
        updates = self._updates.get(key)
        if updates is None:
            raise ScheduleError(f"the cache schedule has no entry for branch {key!r}")
        if step in updates:
            out = compute()
            self._stored[key] = out
            return out
        stored = self._stored.get(key)
        if stored is None or stored.shape != x.shape:
            raise ScheduleError(f"branch {key!r} has no cached residual for input {tuple(x.shape)} at step {step}: "
                                "sampling must run its steps in order from step 0")
        return stored


def branch_keys(denoiser) -> list[str]:
    """The denoiser's residual branches; refuses a network without them (the UNet)."""
    if not hasattr(denoiser, "branch_keys"):
        raise ScheduleError(f"block-wise caching needs a transformer denoiser (policy.network=transformer); "
                            f"this policy's denoiser is {type(denoiser).__name__}")
    return denoiser.branch_keys()


def install(denoiser, cache: BlockCache | None) -> None:
    """Set (or with None remove) ``denoiser``'s branch cache, checking it covers every branch."""
    keys = branch_keys(denoiser)
    if cache is not None:
        cache.check_branches(keys)
    denoiser.branch_cache = cache


def _short(levels: Sequence[float]) -> str:
    shown = ", ".join(f"{v:.3g}" for v in list(levels)[:3])
    return f"[{shown}{', ...' if len(levels) > 3 else ''}]"
