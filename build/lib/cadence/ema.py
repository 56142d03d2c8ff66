"""Exponential moving average of weights, with warm-up: decay = min(max, 1 - (1 + step/10)^-0.75).

Early on the average follows the weights closely; later it smooths over ~1 / (1 - max) steps.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, max_decay: float = 0.999, power: float = 0.75, inv_gamma: float = 10.0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay, self.power, self.inv_gamma = max_decay, power, inv_gamma

    def decay(self, step: int) -> float:
        return min(self.max_decay, max(0.0, 1.0 - (1.0 + step / self.inv_gamma) ** -self.power))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay(step)
        for avg, new in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(new.detach(), 1.0 - d)
        for avg, new in zip(self.model.buffers(), model.buffers()):
            avg.copy_(new)
