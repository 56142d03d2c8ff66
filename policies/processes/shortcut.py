"""Shortcut model (Frans et al., ICLR'25): a rectified flow also conditioned on its step size.

Time runs from noise (t = 0) to data (t = 1) as in :mod:`.rectified_flow`. The network
``net(x, level, cond ++ code(d))`` predicts the velocity for a jump of size ``d = 2^-i``
(``i = 0 .. log2(max_steps)``), told ``d`` by a one-hot code appended to the observation
encoding (the factory widens the network's conditioning by :attr:`extra_cond_dim`).

Training, per batch: a ``1 - bootstrap_fraction`` share regresses the flow velocity ``x0 - noise``
at the smallest step ``1 / max_steps``; the rest learns self-consistency: at ``t`` on the grid of
``d``, the velocity for ``d`` should equal the mean of two ``d/2`` velocities taken one after the
other (targets without gradient). Sampling with ``K`` steps (a power of 2, at most ``max_steps``)
takes Euler steps of ``d = 1/K`` told ``d``: one network call per step, good at 1, 2 or 4 steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import POSITIVE, Int, Number, ProcessBase, register
from .known_actions import KnownActions
from .rectified_flow import sample_straight_path, scalar_tensor


@register
class ShortcutProcess(ProcessBase):
    name = "shortcut"
    loop_graph = True
    finetune_method = "reinflow"
    budget_steps = (8, 4, 2, 1)
    spec_fields = {"sample_steps": Int("sample_steps"), "max_steps": Int("sample_steps", low=2),
                   "level_scale": Number(POSITIVE)}

    def __init__(self, sample_steps: int = 4, max_steps: int = 128, bootstrap_fraction: float = 0.25,
                 level_scale: float = 100.0):
        if max_steps < 2 or max_steps & (max_steps - 1):
            raise ValueError(f"policy.shortcut.max_steps must be a power of 2 >= 2, got {max_steps}")
        if not 0.0 <= bootstrap_fraction < 1.0:
            raise ValueError(f"policy.shortcut.bootstrap_fraction must be in [0, 1), got {bootstrap_fraction}")
        self.max_steps, self.bootstrap_fraction, self.level_scale = max_steps, bootstrap_fraction, level_scale
        self.check_steps(sample_steps)
        self.sample_steps = sample_steps

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        return cls(cfg.sample_steps, cfg.shortcut.max_steps, cfg.shortcut.bootstrap_fraction)

    def reference_steps(self) -> int:
        return self.max_steps           # the finest step: the flow velocity it was trained on

    def level_range(self) -> float:
        return float(self.level_scale)

    @property
    def extra_cond_dim(self) -> int:
        """Width of the step-size code appended to the network's conditioning."""
        return int(math.log2(self.max_steps)) + 1

    def check_steps(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or steps & (steps - 1) or steps > self.max_steps:
            raise ValueError(f"a shortcut policy samples with a power of 2 steps up to max_steps "
                             f"({self.max_steps}), got {steps}")

    def code(self, steps: torch.Tensor | int, batch: int, device) -> torch.Tensor:
        """One-hot code of the step size ``1/steps`` (``steps``: int, or (B,) powers of 2) -> (B, extra_cond_dim)."""
        steps = scalar_tensor(steps, device).expand(batch)
        index = torch.log2(steps.float()).round().long()
        return F.one_hot(index, self.extra_cond_dim).float()

    def velocity(self, net, x: torch.Tensor, t, cond: torch.Tensor, steps, step: int | None = None) -> torch.Tensor:
        """The network's velocity at time ``t`` (float or (B,)) for a jump of ``1/steps``."""
        b = x.shape[0]
        level = scalar_tensor(t, x.device, x.dtype).expand(b) * self.level_scale
        return net(x, level, torch.cat([cond, self.code(steps, b, x.device)], dim=-1), step=step)

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, device, dtype = x0.shape[0], x0.device, x0.dtype
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype)
        n_boot = int(round(b * self.bootstrap_fraction))
        # step counts: 1/d. Flow samples use the finest step; bootstrap samples d = 2^-i, i < log2(max_steps)
        steps = torch.full((b,), self.max_steps, device=device)
        boot_index = torch.randint(0, self.extra_cond_dim - 1, (n_boot,), generator=generator, device=device)
        steps[:n_boot] = 2 ** boot_index
        t = torch.rand((b,), generator=generator, device=device, dtype=dtype)
        grid = torch.floor(t[:n_boot] * steps[:n_boot]) / steps[:n_boot]      # bootstrap times on their step's grid
        t = torch.cat([grid, t[n_boot:]])
        x_t = (1 - t.view(b, 1, 1)) * noise + t.view(b, 1, 1) * x0
        target = x0 - noise
        if n_boot:
            with torch.no_grad():
                half = 2 * steps[:n_boot]
                xb, cb, tb = x_t[:n_boot], cond[:n_boot], t[:n_boot]
                v1 = self.velocity(net, xb, tb, cb, half)
                v2 = self.velocity(net, xb + v1 / half.view(-1, 1, 1), tb + 1 / half, cb, half)
                target = torch.cat([(v1 + v2) / 2, target[n_boot:]])
        return F.mse_loss(self.velocity(net, x_t, t, cond, steps), target)

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None) -> torch.Tensor:
        k_steps = self.sample_steps
        return sample_straight_path(lambda x, t, k: self.velocity(net, x, t, cond, k_steps, step=k), shape,
                                    cond.device, k_steps, generator, noise, known)

    def levels(self) -> list[float]:
        return [k / self.sample_steps * self.level_scale for k in range(self.sample_steps)]
