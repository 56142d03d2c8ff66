"""ReinFlow's noise network: a bounded, learnable standard deviation sigma(s, t_k) per chunk element.

An MLP over [observation encoding (no gradient into the policy), embedding of the denoising time]
-> tanh -> a log-variance mapped affinely into [ln sigma_min^2, ln sigma_max^2], so sigma stays in
[sigma_min, sigma_max] whatever the weights. Schedules:

- ``fixed``: sigma = sigma_max everywhere (the network is not used);
- ``decay``: sigma = the decaying upper bound (see below), not learned;
- ``learn``: learned within [sigma_min, sigma_max];
- ``learn_decay``: learned within [sigma_min, upper(progress)], where the upper bound holds sigma_max
  for the first ``hold`` share of fine-tuning, then cosine-anneals to sigma_min + floor * (sigma_max - sigma_min).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..networks.embeddings import SinusoidalEmbedding

SCHEDULES = ("fixed", "decay", "learn", "learn_decay")


class ExplorationNoise(nn.Module):
    def __init__(self, cond_dim: int, chunk_numel: int, sigma_min: float = 0.08, sigma_max: float = 0.16,
                 schedule: str = "learn", hidden: int = 64, time_dim: int = 16, hold: float = 0.35,
                 floor: float = 0.7):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"finetune.noise.schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.schedule = sigma_min, sigma_max, schedule
        self.hold, self.floor, self.chunk_numel = hold, floor, chunk_numel
        self.time_embed = SinusoidalEmbedding(time_dim)
        self.net = nn.Sequential(nn.Linear(cond_dim + time_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, chunk_numel))

    def upper(self, progress: float) -> float:
        """The largest sigma allowed at ``progress`` in [0, 1] of fine-tuning."""
        if self.schedule in ("fixed", "learn") or progress <= self.hold:
            return self.sigma_max
        end = self.sigma_min + self.floor * (self.sigma_max - self.sigma_min)
        u = min(1.0, (progress - self.hold) / max(1e-9, 1.0 - self.hold))
        return end + 0.5 * (self.sigma_max - end) * (1 + math.cos(math.pi * u))

    def forward(self, cond: torch.Tensor, t: float, progress: float = 0.0) -> torch.Tensor:
        """``cond`` (B, Dc), denoising time ``t`` in [0, 1] -> sigma (B, chunk_numel)."""
        b = cond.shape[0]
        high = self.upper(progress)
        if self.schedule in ("fixed", "decay"):
            return torch.full((b, self.chunk_numel), high, device=cond.device, dtype=cond.dtype)
        time = self.time_embed(torch.full((b,), 100.0 * t, device=cond.device))
        squash = torch.tanh(self.net(torch.cat([cond.detach(), time], dim=-1)))
        low_log, high_log = 2 * math.log(self.sigma_min), 2 * math.log(high)
        log_var = low_log + 0.5 * (squash + 1) * (high_log - low_log)
        return torch.exp(0.5 * log_var)
