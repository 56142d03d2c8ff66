"""Plain regression: the network maps the observation straight to a chunk (MSE).

The control policy: same network as the generative ones, fed a zero chunk at level 0. With
two equally likely ways to act it learns their average, which is what makes multimodality
worth paying for. ``known`` entries simply overwrite the prediction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ProcessBase, register
from .known_actions import KnownActions


@register
class RegressionProcess(ProcessBase):
    name = "regression"
    budget_steps = (1,)
    sample_steps = 1

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        return cls()

    def check_steps(self, steps: int) -> None:
        if steps != 1 or isinstance(steps, bool):
            raise ValueError(f"a regression policy makes exactly one network call; sample_steps must be 1 or None, "
                             f"got {steps}")

    def reference_steps(self) -> int:
        return 1

    def levels(self) -> list[float]:
        return [0.0]

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return F.mse_loss(self._predict(net, cond, x0.shape), x0)

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None) -> torch.Tensor:
        x = self._predict(net, cond, shape)
        return x if known is None else known.impose(x, x, 1.0, 0.0)

    @staticmethod
    def _predict(net, cond: torch.Tensor, shape) -> torch.Tensor:
        zeros = torch.zeros(shape, device=cond.device, dtype=cond.dtype)
        return net(zeros, torch.zeros(shape[0], device=cond.device), cond)
