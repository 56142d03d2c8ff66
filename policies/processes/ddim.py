"""The deterministic DDIM update (Song et al. 2021), shared by every DDPM-schedule process.

With ``a`` the cumulative alpha at the current level and ``a_next`` at the next one, a step
predicts the clean chunk ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)`` from the network's noise
estimate ``eps`` (or takes ``x0`` from a network that predicts it), optionally clips ``x0`` to
[-1, 1] and re-derives ``eps = (x - sqrt(a) x0) / sqrt(1 - a)`` from it, and moves to

    x_next = sqrt(a_next) x0 + sqrt(1 - a_next - sigma^2) eps

``sigma = 0`` is DDIM proper; DPPO's stochastic steps pass their ``sigma`` and add the noise
themselves. ``a`` and ``a_next`` are floats, or tensors broadcasting against ``x`` (per-element
levels, as a streaming buffer has).
"""
from __future__ import annotations

import math

import torch


def _sqrt(v, floor: float = 0.0):
    if isinstance(v, torch.Tensor):
        return v.clamp(min=floor).sqrt()
    return math.sqrt(max(v, floor))


def ddim_x0(x: torch.Tensor, eps: torch.Tensor, a) -> torch.Tensor:
    """The clean chunk a noise estimate implies at cumulative alpha ``a``."""
    return (x - _sqrt(1 - a) * eps) / _sqrt(a)


def ddim_step(x: torch.Tensor, a, a_next, *, eps: torch.Tensor | None = None, x0: torch.Tensor | None = None,
              clip_sample: bool = False, sigma: float = 0.0) -> torch.Tensor:
    """One update from cumulative alpha ``a`` to ``a_next``, given the network's ``eps`` or ``x0``."""
    if x0 is None:
        x0 = ddim_x0(x, eps, a)
    if clip_sample:
        x0, eps = x0.clamp(-1.0, 1.0), None
    if eps is None:
        eps = (x - _sqrt(a) * x0) / _sqrt(1 - a, 1e-12)
    return _sqrt(a_next) * x0 + _sqrt(1 - a_next - sigma ** 2) * eps
