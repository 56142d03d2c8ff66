"""The value function V(s) for PPO: an MLP (Mish) over the normalised low-dimensional observation history."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from cadence.datasets.window_dataset import is_image_shape


class Critic(nn.Module):
    def __init__(self, obs_shapes: Mapping[str, tuple], obs_horizon: int, normalizer, hidden: int = 256,
                 n_layers: int = 3):
        super().__init__()
        images = [k for k, s in obs_shapes.items() if is_image_shape(s)]
        if images:
            raise ValueError(f"cadence finetune supports low-dimensional observations only; the policy observes "
                             f"images {images}")
        self.keys = sorted(obs_shapes)
        self.normalizer = [normalizer]        # the policy's (not a submodule: not saved twice)
        width = obs_horizon * sum(int(torch.tensor(obs_shapes[k]).prod()) for k in self.keys)
        layers, dim = [], width
        for _ in range(n_layers):
            layers += [nn.Linear(dim, hidden), nn.Mish()]
            dim = hidden
        self.net = nn.Sequential(*layers, nn.Linear(dim, 1))

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``obs`` {key: (B, To, ...)} in task units -> V (B,)."""
        norm = self.normalizer[0]
        x = torch.cat([(norm.normalize(k, obs[k].float()) if k in norm.modes else obs[k].float()).flatten(1)
                       for k in self.keys], dim=-1)
        return self.net(x).squeeze(-1)
