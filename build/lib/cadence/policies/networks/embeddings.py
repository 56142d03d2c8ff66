"""Sinusoidal embedding of a scalar noise level (diffusion timestep or flow time)."""
from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int, max_period: float = 10_000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / max(half - 1, 1)),
                             persistent=False)

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        """``level`` (...,) float -> (..., dim)."""
        angles = level.float()[..., None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
