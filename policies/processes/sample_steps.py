"""Change how many network calls a trained process samples with (DDIM / Euler steps)."""
from __future__ import annotations

import copy

from .ddpm import DDPMProcess
from .regression import RegressionProcess
from .shortcut import ShortcutProcess
from .streaming import StreamingProcess
from .truncated_anchor import TruncatedAnchorProcess, sampling_timesteps


def with_sample_steps(process, steps: int | None):
    """A private copy of ``process`` sampling with ``steps`` network calls (None: keep its own)."""
    process = copy.deepcopy(process)
    if steps is None:
        return process
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"sample_steps must be a positive int or None, got {steps!r}")
    if isinstance(process, RegressionProcess):
        if steps != 1:
            raise ValueError(f"a regression policy makes exactly one network call; sample_steps must be 1 or None, "
                             f"got {steps}")
        return process
    if not hasattr(process, "sample_steps"):
        raise TypeError(f"{type(process).__name__} has no sample_steps to override")
    if isinstance(process, DDPMProcess) and steps > process.train_steps:
        raise ValueError(f"need 1 <= sample_steps <= train_steps ({process.train_steps}), got {steps}")
    if isinstance(process, TruncatedAnchorProcess):
        sampling_timesteps(process.start_step, steps)       # at most start_step + 1 distinct timesteps
    if isinstance(process, ShortcutProcess):
        process.check_steps(steps)
    if isinstance(process, StreamingProcess) and steps > process.band:
        raise ValueError(f"a streaming policy takes 1 to {process.band} calls per replan (one chunk's band of "
                         f"timesteps), got {steps}")
    process.sample_steps = steps
    return process
