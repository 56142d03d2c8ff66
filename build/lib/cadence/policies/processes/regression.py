"""Plain regression: the network maps the observation straight to a chunk (MSE).

The control policy: same network as the generative ones, fed a zero chunk at level 0. With
two equally likely ways to act it learns their average, which is what makes multimodality
worth paying for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class RegressionProcess:
    sample_steps = 1

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.mse_loss(self._predict(net, cond, x0.shape), x0)

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        return self._predict(net, cond, shape)

    @staticmethod
    def _predict(net, cond: torch.Tensor, shape) -> torch.Tensor:
        zeros = torch.zeros(shape, device=cond.device, dtype=cond.dtype)
        return net(zeros, torch.zeros(shape[0], device=cond.device), cond)
