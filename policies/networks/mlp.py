"""MLP denoiser: the whole chunk flattened, one residual MLP (the ReinFlow / DPPO state-task network).

``forward(x, level, cond, step=None)``: ``x`` (B, Tp, Da), ``level`` (B,) (one noise level per
sample; per-step levels are refused), ``cond`` (B, Dc) -> (B, Tp, Da). Input layer over
[flattened chunk, level embedding, cond], ``n_layers`` residual blocks (LayerNorm, Linear, Mish),
output layer initialised at zero so a fresh network predicts 0.
"""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import SinusoidalEmbedding


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.Mish(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class MLPDenoiser(nn.Module):
    def __init__(self, action_dim: int, pred_horizon: int, cond_dim: int, width: int = 512, n_layers: int = 3,
                 level_embed_dim: int = 64):
        super().__init__()
        self.action_dim, self.pred_horizon = action_dim, pred_horizon
        self.level_embed = nn.Sequential(SinusoidalEmbedding(level_embed_dim), nn.Linear(level_embed_dim, level_embed_dim),
                                         nn.Mish())
        self.inp = nn.Sequential(nn.Linear(pred_horizon * action_dim + level_embed_dim + cond_dim, width), nn.Mish())
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(n_layers)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, pred_horizon * action_dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None
                ) -> torch.Tensor:
        b = x.shape[0]
        if tuple(x.shape[1:]) != (self.pred_horizon, self.action_dim):
            raise ValueError(f"x must be (B, {self.pred_horizon}, {self.action_dim}), got {tuple(x.shape)}")
        if level.ndim > 1:
            raise ValueError(f"the mlp network takes one level per sample (B,), got {tuple(level.shape)}; "
                             f"use policy.network=unet or transformer for per-step levels")
        h = torch.cat([x.reshape(b, -1), self.level_embed(level.expand(b)), cond], dim=-1)
        return self.out(self.blocks(self.inp(h))).view_as(x)
