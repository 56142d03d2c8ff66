"""Observation encoder: an observation history -> one condition vector per sample.

Low-dimensional keys (any per-step shape but an image's, flattened) are normalised and
concatenated; each image key (``(H, W, 3)`` per step) goes through its own
image encoder (:class:`ConvImageEncoder` or :class:`ResNet18ImageEncoder`, several cameras
fused), frame by frame. The per-step features of all ``To`` steps are
flattened and passed through an MLP.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .image_encoder import ConvImageEncoder
from .resnet_encoder import ResNet18ImageEncoder
from cadence.datasets.normalizer import Normalizer, module_name
from cadence.datasets.window_dataset import is_image_shape

IMAGE_ENCODERS = ("conv", "resnet18")


class ObsEncoder(nn.Module):
    def __init__(self, obs_shapes: Mapping[str, Sequence[int]], obs_horizon: int, out_dim: int = 128,
                 hidden_dim: int = 256, image_feature_dim: int = 64, image_encoder: str = "conv", crop: float = 1.0):
        super().__init__()
        self.image_keys = sorted(k for k, s in obs_shapes.items() if is_image_shape(s))
        self.lowdim_keys = sorted(set(obs_shapes) - set(self.image_keys))
        empty = [k for k in self.lowdim_keys if math.prod(obs_shapes[k]) == 0]
        if empty:
            raise ValueError(f"observation keys {empty} have no elements: "
                             f"{ {k: tuple(obs_shapes[k]) for k in empty} }")
        self.obs_horizon = obs_horizon
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"policy.image_encoder must be one of {IMAGE_ENCODERS}, got {image_encoder!r}")
        make = (lambda: ConvImageEncoder(image_feature_dim)) if image_encoder == "conv" else \
            (lambda: ResNet18ImageEncoder(image_feature_dim, crop))
        self.images = nn.ModuleDict({module_name(k): make() for k in self.image_keys})
        for key, encoder in zip(self.image_keys, self.images.values()):
            if hasattr(encoder, "check_image_size"):
                encoder.check_image_size(*obs_shapes[key][:2])
        per_step = sum(math.prod(obs_shapes[k]) for k in self.lowdim_keys) + image_feature_dim * len(self.image_keys)
        self.mlp = nn.Sequential(nn.Linear(per_step * obs_horizon, hidden_dim), nn.Mish(),
                                 nn.Linear(hidden_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, obs: Mapping[str, torch.Tensor], normalizer: Normalizer,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``generator`` draws the training-time random crops (ResNet-18 encoder)."""
        feats = [normalizer.normalize(k, obs[k].float()).flatten(2) for k in self.lowdim_keys]
        for key, encoder in zip(self.image_keys, self.images.values()):
            frames = obs[key]
            b, t = frames.shape[:2]
            feats.append(encoder(frames.flatten(0, 1), generator).view(b, t, -1))
        x = torch.cat(feats, dim=-1)
        if x.shape[1] != self.obs_horizon:
            raise ValueError(f"expected {self.obs_horizon} observation steps, got {x.shape[1]}")
        return self.mlp(x.flatten(1))
