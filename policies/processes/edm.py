"""EDM / score-based diffusion (Karras et al. 2022) in the BESO / MoDE parameterisation.

Data ``x0`` is noised as ``x = x0 + sigma * n``. The network ``F`` is wrapped by Karras
preconditioning into a denoiser

    D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, level(sigma))

with ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma * sd / sqrt(sigma^2 + sd^2)``,
``c_in = 1 / sqrt(sigma^2 + sd^2)`` and ``sd = sigma_data`` (0.5). Training draws sigma from a
log-logistic distribution (loc ln 0.5, scale 0.5) truncated to [sigma_min, sigma_max] and
regresses ``F`` onto ``(x0 - c_skip * x) / c_out``.

Sampling walks ``K`` noise levels spaced evenly in log sigma from ``sigma_max`` down to
``sigma_min`` and then 0, starting from ``x = sigma_max * noise``; ``K`` network calls:

- ``ddim`` (DPM-Solver-1): ``x <- (s'/s) x - expm1(-h) D(x, s)``, ``h = ln(s / s')``;
- ``euler``: ``x <- x + (s' - s) (x - D(x, s)) / s`` on the probability-flow ODE.

For this variance-exploding process the two are the same update written two ways (both equal
``(s'/s) x + (1 - s'/s) D``); both are kept because users know both names, and the tests check
each against its own formula. The last step (``s' = 0``) returns ``D`` itself.

The network sees ``level = 100 * (ln sigma - ln sigma_min) / (ln sigma_max - ln sigma_min)``,
an affine map of MoDE's ``ln(sigma) / 4`` onto the 0..100 range DDPM timesteps and flow times
use, so every denoiser of this stack runs under every process. ``known`` entries (see
:mod:`.known_actions`) are held at ``value + sigma * noise`` with the starting noise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import POSITIVE, Choice, Flag, Int, Number, ProcessBase, register
from .known_actions import KnownActions

SAMPLERS = ("ddim", "euler")
LEVEL_RANGE = 100.0


@register
class EDMProcess(ProcessBase):
    name = "edm"
    loop_graph = True
    budget_steps = (50, 20, 10, 5, 3)
    spec_fields = {"sample_steps": Int("sample_steps"), "sigma_min": Number(POSITIVE, 1e4),
                   "sigma_max": Number(POSITIVE, 1e4), "sigma_data": Number(POSITIVE, 1e4), "sampler": Choice(*SAMPLERS), "clip_sample": Flag()}

    def __init__(self, sample_steps: int = 10, sigma_min: float = 1e-3, sigma_max: float = 80.0,
                 sigma_data: float = 0.5, sampler: str = "ddim", clip_sample: bool = True,
                 train_loc: float = math.log(0.5), train_scale: float = 0.5):
        if sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {sample_steps}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if not math.log(sigma_max) - math.log(sigma_min) > 1e-6:      # the levels divide by it
            raise ValueError(f"sigma_min and sigma_max must differ by more than 1e-6 in log, got {sigma_min} and "
                             f"{sigma_max}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.sample_steps = sample_steps
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.sampler = sampler
        self.clip_sample = clip_sample
        self.train_loc, self.train_scale = train_loc, train_scale

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        e = cfg.edm
        return cls(cfg.sample_steps, e.sigma_min, e.sigma_max, e.sigma_data, e.sampler, cfg.clip_sample)

    def reference_steps(self) -> int:
        return 100

    # --- preconditioning -------------------------------------------------------------------
    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in) for ``sigma`` of any shape."""
        sd2 = self.sigma_data ** 2
        total = sigma ** 2 + sd2
        return sd2 / total, sigma * self.sigma_data / total.sqrt(), 1.0 / total.sqrt()

    def level(self, sigma: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return LEVEL_RANGE * (sigma.log() - lo) / (hi - lo)

    def denoise(self, net, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, step: int | None = None
                ) -> torch.Tensor:
        """D(x, sigma): the preconditioned estimate of the clean chunk; ``sigma`` (B,)."""
        c_skip, c_out, c_in = (s.view(-1, 1, 1) for s in self.scalings(sigma))
        out = c_skip * x + c_out * net(c_in * x, self.level(sigma), cond, step=step)
        return out.clamp(-1.0, 1.0) if self.clip_sample else out

    # --- training --------------------------------------------------------------------------
    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Truncated log-logistic: ln sigma = loc + scale * logit(u), u uniform between the CDF
        values of sigma_min and sigma_max (inverse-CDF sampling)."""
        cdf = lambda s: 1.0 / (1.0 + math.exp(-(math.log(s) - self.train_loc) / self.train_scale))  # noqa: E731
        lo, hi = cdf(self.sigma_min), cdf(self.sigma_max)
        u = lo + (hi - lo) * torch.rand((n,), generator=generator, device=device, dtype=torch.float64)
        return (self.train_loc + self.train_scale * torch.logit(u)).exp().float()

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x0.shape[0]
        sigma = self.sample_sigma(b, generator, x0.device).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        c_skip, c_out, c_in = (s.view(b, 1, 1) for s in self.scalings(sigma))
        x = x0 + sigma.view(b, 1, 1) * noise
        target = (x0 - c_skip * x) / c_out
        return F.mse_loss(net(c_in * x, self.level(sigma), cond), target)

    # --- sampling --------------------------------------------------------------------------
    def sigmas(self) -> list[float]:
        """The K sampling noise levels (largest first) followed by 0."""
        k = self.sample_steps
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        logs = [hi] if k == 1 else [hi + (lo - hi) * i / (k - 1) for i in range(k)]
        return [math.exp(v) for v in logs] + [0.0]

    def levels(self) -> list[float]:
        """The level the network sees at each sampling step (the key list of step-indexed caches);
        computed once per schedule (it is asked for before every chunk)."""
        key = (self.sample_steps, self.sigma_min, self.sigma_max)
        if getattr(self, "_levels", (None,))[0] != key:
            self._levels = (key, [self.level(torch.full((1,), s)).item() for s in self.sigmas()[:-1]])  # as in sample()
        return list(self._levels[1])

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator, device=cond.device) if noise is None else noise
        sigmas = self.sigmas()
        x = sigmas[0] * noise
        if known is not None:
            x = known.impose(x, noise, 1.0, sigmas[0])
        for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            d = self.denoise(net, x, torch.full((shape[0],), s, device=x.device), cond, step=i)
            if self.sampler == "ddim":
                x = (s_next / s) * x - math.expm1(-math.log(s / s_next)) * d if s_next > 0 else d
            else:
                x = x + (s_next - s) * (x - d) / s
            if known is not None:
                x = known.impose(x, noise, 1.0, s_next)
        return x
