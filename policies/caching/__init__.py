"""Block-wise caching of a transformer denoiser's residual branches across sampling steps.

BAC (Ji et al., 2025, "Block-wise Adaptive Caching"): a trained transformer denoiser is run
uncached on calibration observations, every residual branch's output is recorded at every
sampling step (:mod:`.calibration`), and per branch an exact dynamic program picks the ``M``
steps at which to recompute it (:mod:`.cache_scheduler`); the Bubbling Union then refreshes
the most volatile branches whenever a downstream feed-forward branch is refreshed
(:mod:`.bubbling_union`). At inference (:mod:`.block_cache`) a branch is computed at its update
steps and its stored residual reused at the others. Uniform-interval caching (every branch at
the same ``M`` evenly spaced steps) is the baseline (:func:`.schedule.uniform_schedule`).
"""
from .block_cache import BlockCache
from .schedule import CacheSchedule, uniform_schedule

__all__ = ["BlockCache", "CacheSchedule", "uniform_schedule"]
