"""DDPM training (epsilon prediction, cosine schedule) with deterministic DDIM sampling.

Training draws ``t ~ U{0..T-1}`` and ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with
``a_t`` the cumulative product of alphas; the network predicts ``eps``. DDIM (eta = 0) walks
``K`` evenly spaced timesteps ``t_k = k * T // K`` from the noisiest down, predicting
``x0``, clipping it to [-1, 1] (actions are normalised to that range), re-deriving
``eps`` from the clipped ``x0`` and stepping to the next timestep; the last step lands on
``a = 1``, the clean sample. With ``K = T`` this is the full 100-step chain. ``known``
entries (see :mod:`.known_actions`) are re-imposed at every level.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Const, Flag, Int, ProcessBase, register
from .ddim import ddim_step
from .known_actions import KnownActions


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cumulative alpha products of the squared-cosine schedule (Nichol & Dhariwal), float64."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta)
                          for i in range(num_steps)], dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


@register
class DDPMProcess(ProcessBase):
    name = "ddpm"
    loop_graph = True
    finetune_method = "dppo"
    budget_steps = (100, 50, 20, 10, 5, 2)
    spec_fields = {"schedule": Const("cosine"), "train_steps": Int("diffusion_steps"),
                   "sample_steps": Int("sample_steps"), "clip_sample": Flag()}

    def __init__(self, train_steps: int = 100, sample_steps: int = 10, clip_sample: bool = True):
        if not 1 <= sample_steps <= train_steps:
            raise ValueError(f"need 1 <= sample_steps <= train_steps, got {sample_steps} and {train_steps}")
        self.train_steps = train_steps
        self.sample_steps = sample_steps
        self.clip_sample = clip_sample
        self.alphas_cumprod = cosine_alphas_cumprod(train_steps)

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        return cls(cfg.diffusion_steps, cfg.sample_steps, cfg.clip_sample)

    def check_steps(self, steps: int) -> None:
        super().check_steps(steps)
        if steps > self.train_steps:
            raise ValueError(f"need 1 <= sample_steps <= train_steps ({self.train_steps}), got {steps}")

    def reference_steps(self) -> int:
        return self.train_steps         # the full chain

    def level_range(self) -> float:
        return float(self.train_steps)

    def clean_input(self, noise: float) -> tuple[float, float]:
        t = min(max(round(noise * self.train_steps), 0), self.train_steps - 1)
        return float(self.alphas_cumprod[t].sqrt()), float(t)

    def timesteps(self) -> list[int]:
        stride = self.train_steps // self.sample_steps
        return [k * stride for k in reversed(range(self.sample_steps))]

    def levels(self) -> list[float]:
        """The level (timestep) the network sees at each sampling step."""
        return [float(t) for t in self.timesteps()]

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x0.shape[0]
        t = torch.randint(0, self.train_steps, (b,), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(b, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        return F.mse_loss(net(x_t, t.to(x0.dtype), cond), eps)

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None) -> torch.Tensor:
        x = torch.randn(shape, generator=generator, device=cond.device) if noise is None else noise.clone()
        alphas = self.alphas_cumprod.tolist()
        steps = self.timesteps()
        start_noise = x.clone()
        if known is not None:
            x = known.impose(x, start_noise, math.sqrt(alphas[steps[0]]), math.sqrt(1 - alphas[steps[0]]))
        for i, t in enumerate(steps):
            a = alphas[t]
            a_prev = alphas[steps[i + 1]] if i + 1 < len(steps) else 1.0
            eps = net(x, torch.full((shape[0],), float(t), device=x.device), cond, step=i)
            x = ddim_step(x, a, a_prev, eps=eps, clip_sample=self.clip_sample)
            if known is not None:
                x = known.impose(x, start_noise, math.sqrt(a_prev), math.sqrt(1 - a_prev))
        return x
