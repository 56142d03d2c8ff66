"""A small convolutional image encoder: 4 conv layers with GroupNorm, spatial-softmax pooling.

Takes uint8 (N, H, W, 3) frames, returns (N, feature_dim). Spatial softmax turns each of the
last layer's channels into the expected (x, y) image position of its activation, the pooling
Diffusion Policy's ResNet encoder uses; it keeps where things are, which is what a
controller needs. ``policy.image_encoder=resnet18`` selects :mod:`.resnet_encoder` instead.
"""
from __future__ import annotations

import torch
from torch import nn


class SpatialSoftmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        attention = torch.softmax(x.flatten(2), dim=-1).view(n, c, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        ex = (attention.sum(2) * xs).sum(-1)
        ey = (attention.sum(3) * ys).sum(-1)
        return torch.cat([ex, ey], dim=-1)   # (N, 2C)


class ConvImageEncoder(nn.Module):
    def __init__(self, feature_dim: int = 64, channels: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for stride in (2, 2, 1, 1):
            layers += [nn.Conv2d(c_in, channels, 3, stride, 1), nn.GroupNorm(8, channels), nn.Mish()]
            c_in = channels
        self.conv = nn.Sequential(*layers)
        self.pool = SpatialSoftmax()
        self.proj = nn.Linear(2 * channels, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) images, got {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.proj(self.pool(self.conv(x)))
