"""A process of your own: a rectified flow whose network predicts the clean chunk (x-prediction).

Paths run straight from noise (t = 0) to data (t = 1): ``x_t = (1 - t) noise + t x0``. The network
sees ``x_t`` at level ``100 t`` and regresses ``x0`` itself; sampling takes Euler steps along the
velocity that prediction implies, ``(x0_hat - x_t) / (1 - t)``, so the last step lands on the
network's last prediction. Committed actions (``known``) ride their own straight path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cadence.policies.processes.base import Int, ProcessBase, register
from cadence.policies.processes.rectified_flow import sample_straight_path


@register                                   # policy.process=clean_flow from now on
class CleanFlowProcess(ProcessBase):
    name = "clean_flow"                     # the config value and policy.json's process.type
    budget_steps = (10, 5, 2, 1)            # what `cadence run`'s latency budget tries
    spec_fields = {"sample_steps": Int("sample_steps")}     # policy.json: checked on load

    def __init__(self, sample_steps: int = 5):
        self.check_steps(sample_steps)
        self.sample_steps = sample_steps

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        return cls(cfg.sample_steps)        # cfg: the policy config group

    def reference_steps(self) -> int:
        return 50                           # the budget's action error is measured against 50 steps

    def levels(self) -> list[float]:
        return [100.0 * k / self.sample_steps for k in range(self.sample_steps)]

    def loss(self, net, x0, cond, generator=None):
        t = torch.rand((x0.shape[0],), generator=generator, device=x0.device, dtype=x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = (1 - t.view(-1, 1, 1)) * noise + t.view(-1, 1, 1) * x0
        return F.mse_loss(net(x_t, 100.0 * t, cond), x0)

    @torch.no_grad()
    def sample(self, net, cond, shape, generator=None, noise=None, known=None):
        def velocity(x, t, k):
            level = torch.full((shape[0],), 100.0 * t, device=x.device)
            return (net(x, level, cond, step=k) - x) / (1 - t)
        return sample_straight_path(velocity, shape, cond.device, self.sample_steps, generator, noise, known)
