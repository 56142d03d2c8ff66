"""Rectified flow: straight paths from noise (time 0) to data (time 1), Euler sampling.

``x_t = (1 - t) * noise + t * x0`` and the network regresses the constant velocity
``x0 - noise``. Sampling integrates the learned velocity with ``K`` Euler steps from
``t = 0`` to ``t = 1``. The network sees ``level = t * level_scale`` (default 100, the same
range as DDPM timesteps, so both share the level embedding's frequencies). ``known`` entries
(see :mod:`.known_actions`) sit on their straight path at every step.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .base import POSITIVE, Int, Number, ProcessBase, register
from .known_actions import KnownActions


def euler_integrate(velocity: Callable[[torch.Tensor, float, int], torch.Tensor], x: torch.Tensor, steps: int,
                    after_step: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t, k) from t = 0 to 1 with ``steps`` equal Euler steps
    (``k`` is the step index); ``after_step(x, t)`` may adjust the state reached at each new time ``t``."""
    dt = 1.0 / steps
    for k in range(steps):
        x = x + dt * velocity(x, k * dt, k)
        if after_step is not None:
            x = after_step(x, (k + 1) * dt)
    return x


def scalar_tensor(value, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``value`` (a Python number, or a tensor) as a tensor on ``device``. A number is filled in on the
    device rather than copied from the host, which a CUDA graph being captured does not allow."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype or value.dtype)
    return torch.full((), value, device=device, dtype=dtype)


def sample_straight_path(velocity: Callable[[torch.Tensor, float, int], torch.Tensor], shape: tuple[int, ...], device,
                         steps: int, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                         known: KnownActions | None = None) -> torch.Tensor:
    """Euler-integrate ``velocity`` from ``noise`` (or a fresh draw) at t = 0 to t = 1; ``known``
    entries are put on their straight path from the start noise after every step."""
    x = torch.randn(shape, generator=generator, device=device) if noise is None else noise.clone()
    start = x.clone()
    after = None if known is None else (lambda x, t: known.impose(x, start, t, 1 - t))
    return euler_integrate(velocity, x, steps, after)


@register
class RectifiedFlowProcess(ProcessBase):
    name = "flow"
    loop_graph = True
    finetune_method = "reinflow"
    budget_steps = (50, 20, 10, 5, 2, 1)
    spec_fields = {"sample_steps": Int("sample_steps"), "level_scale": Number(POSITIVE)}

    def __init__(self, sample_steps: int = 10, level_scale: float = 100.0):
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {sample_steps}")
        self.sample_steps = sample_steps
        self.level_scale = level_scale

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        return cls(cfg.sample_steps)

    def reference_steps(self) -> int:
        return 100

    def level_range(self) -> float:
        return float(self.level_scale)

    def clean_input(self, noise: float) -> tuple[float, float]:
        t = min(max(1.0 - noise, 0.0), 1.0)           # x_t = (1 - t) noise + t x0
        return t, t * self.level_scale

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x0.shape[0]
        t = torch.rand((b,), generator=generator, device=x0.device, dtype=x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = (1 - t.view(b, 1, 1)) * noise + t.view(b, 1, 1) * x0
        return F.mse_loss(net(x_t, t * self.level_scale, cond), x0 - noise)

    def velocity(self, net, x: torch.Tensor, t, cond: torch.Tensor, steps=None, step: int | None = None
                 ) -> torch.Tensor:
        """The network's velocity at time ``t`` (float or (B,)); ``steps`` is ignored (one velocity field)."""
        level = scalar_tensor(t, x.device, x.dtype).expand(x.shape[0]) * self.level_scale
        return net(x, level, cond, step=step)

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None) -> torch.Tensor:
        return sample_straight_path(lambda x, t, k: self.velocity(net, x, t, cond, step=k), shape, cond.device,
                                    self.sample_steps, generator, noise, known)

    def levels(self) -> list[float]:
        """The level the network sees at each sampling step."""
        return [k / self.sample_steps * self.level_scale for k in range(self.sample_steps)]
