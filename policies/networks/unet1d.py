"""1-D temporal UNet with FiLM conditioning (the Diffusion Policy CNN design).

``forward(x, level, cond, step=None)``: ``x`` (B, Tp, Da) noisy action chunk, ``level`` (B,)
noise level or (B, Tp) one per action step, ``cond`` (B, Dc) encoded observation -> (B, Tp, Da);
``step`` (the sampling step index, used by step-indexed caches) does not change this network.
Each residual block modulates its features with a per-channel scale and bias computed from
[level embedding, cond]. With per-step levels the conditioning is per time position: each
block averages it over the positions its (downsampled) feature map covers, so equal levels
give exactly the per-sample conditioning.
The chunk length must be divisible by 2 ** (len(down_dims) - 1).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import SinusoidalEmbedding


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
                         nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv1 = ConvNormAct(c_in, c_out, kernel, groups)
        self.conv2 = ConvNormAct(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` (B, F) per sample, or (B, F, T) per time position (pooled to this resolution)."""
        h = self.conv1(x)
        if cond.ndim == 3:
            if cond.shape[-1] != h.shape[-1]:
                cond = F.adaptive_avg_pool1d(cond, h.shape[-1])
            scale, bias = self.film(cond.transpose(1, 2)).transpose(1, 2).chunk(2, dim=1)
        else:
            scale, bias = self.film(cond)[..., None].chunk(2, dim=1)
        h = self.conv2(h * scale + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, action_dim: int, cond_dim: int, down_dims: Sequence[int] = (32, 64, 128),
                 kernel_size: int = 5, n_groups: int = 8, level_embed_dim: int = 64):
        super().__init__()
        self.down_factor = 2 ** (len(down_dims) - 1)
        self.level_embed = nn.Sequential(SinusoidalEmbedding(level_embed_dim),
                                         nn.Linear(level_embed_dim, 4 * level_embed_dim), nn.Mish(),
                                         nn.Linear(4 * level_embed_dim, level_embed_dim))
        film_dim = level_embed_dim + cond_dim
        dims = [action_dim, *down_dims]
        block = lambda a, b: FiLMResidualBlock(a, b, film_dim, kernel_size, n_groups)  # noqa: E731

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out),
                                             nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for c_out, c_in in zip(reversed(down_dims[:-1]), reversed(down_dims[1:])):
            self.up.append(nn.ModuleList([block(2 * c_in, c_out), block(c_out, c_out),
                                          nn.ConvTranspose1d(c_out, c_out, 4, 2, 1)]))
        self.head = nn.Sequential(ConvNormAct(down_dims[0], down_dims[0], kernel_size, n_groups),
                                  nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None
                ) -> torch.Tensor:
        b, tp = x.shape[:2]
        if tp % self.down_factor:
            raise ValueError(f"chunk length {tp} must be divisible by {self.down_factor}")
        if level.ndim == 2:
            if tuple(level.shape) != (b, tp):
                raise ValueError(f"per-step levels must be (B, Tp) = {(b, tp)}, got {tuple(level.shape)}")
            film = torch.cat([self.level_embed(level), cond[:, None].expand(-1, tp, -1)], dim=-1).transpose(1, 2)
        elif level.ndim <= 1:
            film = torch.cat([self.level_embed(level.expand(b)), cond], dim=-1)
        else:
            raise ValueError(f"level must be (B,) or (B, Tp), got {tuple(level.shape)}")
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, film), film)
            skips.append(h)
            h = downsample(h)
        for res in self.mid:
            h = res(h, film)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, film), film))
        return self.head(h).transpose(1, 2)
