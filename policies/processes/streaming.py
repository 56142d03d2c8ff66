"""Streaming diffusion (Høeg, Du, Egeland 2024): a rolling buffer of actions at increasing noise levels.

The chunk of ``Tp`` actions is cut into ``h = (Tp - (To - 1)) // Ta`` chunks of ``Ta``; action
``i`` belongs to chunk ``c_i = clip((i - (To - 1)) // Ta, 0, h - 1)`` (the observation-aligned
positions to chunk 0, the leftover tail to chunk h - 1). Each chunk owns a band of ``N / h``
DDPM timesteps; its top is ``top_i = N (c_i + 1) // h - 1``.

Training (epsilon prediction, per-element timesteps ``(B, Tp)``) mixes two regimes per sample:
with probability ``constant_prob`` one ``k ~ U[0, N)`` for the whole chunk, otherwise the
chunk-wise regime ``k_i = top_i - j`` with ``j ~ U{0 .. N // h - 1}`` shared along the chunk.

Sampling keeps the buffer as state (``reset()`` clears it; a new batch size restarts it). Before
each call the buffer sits at the band tops. A call takes ``sample_steps`` DDIM steps that lower
every element by its band's width (``N // h``, one more for some bands when h does not divide N)
in equal strides -- each level the network sees is one the chunk-wise regime trained on -- so
chunk 0 ends clean (level -1) and every later chunk exactly at the top of the band below. The returned chunk is the buffer then: the actions to execute, indices
``To - 1 .. To - 2 + Ta``, are clean. The buffer then shifts by ``Ta``: the slots aligned with
the observation hold executed (clean) actions and are noised forward to chunk 0's top, so their
level matches their label (the reference leaves them clean while labelled noisy), and the last
chunk's slots get fresh noise at level ``N - 1``. The first call of an episode starts from noise
at level ``N - 1`` everywhere and takes ``start_steps`` DDIM steps at one shared level (the
constant regime) down to chunk 0's top; every chunk keeps the state this trajectory had when it
passed the chunk's top, so the start-up is deterministic given its start noise.

``known`` entries (committed actions, prefix freezing) are imposed at every step at their
element's level, with one standard-normal draw per call (the noise the first call started from
during its start-up).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Const, Flag, Int, ProcessBase, register
from .ddim import ddim_step
from .ddpm import cosine_alphas_cumprod
from .known_actions import KnownActions


def chunk_indices(pred_horizon: int, obs_horizon: int, exec_horizon: int) -> list[int]:
    """The chunk of every action index (Høeg et al.'s indexing)."""
    h = num_chunks(pred_horizon, obs_horizon, exec_horizon)
    return [min(max((i - (obs_horizon - 1)) // exec_horizon, 0), h - 1) for i in range(pred_horizon)]


def num_chunks(pred_horizon: int, obs_horizon: int, exec_horizon: int) -> int:
    h = (pred_horizon - (obs_horizon - 1)) // exec_horizon
    if h < 1:
        raise ValueError(f"pred_horizon {pred_horizon} holds no chunk of exec_horizon {exec_horizon} after the "
                         f"{obs_horizon - 1} observation-aligned actions")
    return h


def chunk_tops(train_steps: int, chunks: list[int]) -> list[int]:
    """Top timestep of each action's band: ``N (c + 1) // h - 1``."""
    h = max(chunks) + 1
    return [train_steps * (c + 1) // h - 1 for c in chunks]


@register
class StreamingProcess(ProcessBase):
    name = "streaming"
    budget_steps = (10, 5, 2, 1)
    level_per_action = True
    spec_fields = {"schedule": Const("cosine"), "train_steps": Int("diffusion_steps"),
                   "sample_steps": Int("sample_steps"), "start_steps": Int("sample_steps"), "clip_sample": Flag(),
                   "obs_horizon": Int("horizon"), "pred_horizon": Int("horizon"), "exec_horizon": Int("horizon")}

    def __init__(self, pred_horizon: int, obs_horizon: int, exec_horizon: int, train_steps: int = 100,
                 sample_steps: int = 2, start_steps: int = 10, constant_prob: float = 0.2, clip_sample: bool = True):
        self.chunks = chunk_indices(pred_horizon, obs_horizon, exec_horizon)
        self.num_chunks = max(self.chunks) + 1
        self.band = train_steps // self.num_chunks
        if self.band < 1:
            raise ValueError(f"train_steps {train_steps} gives no timesteps to each of {self.num_chunks} chunks")
        if not 1 <= sample_steps <= self.band:
            raise ValueError(f"need 1 <= sample_steps <= {self.band} (the timesteps of one chunk's band), "
                             f"got {sample_steps}")
        if not 1 <= start_steps:
            raise ValueError(f"start_steps must be >= 1, got {start_steps}")
        if not 0.0 <= constant_prob <= 1.0:
            raise ValueError(f"constant_prob must be in [0, 1], got {constant_prob}")
        self.pred_horizon, self.obs_horizon, self.exec_horizon = pred_horizon, obs_horizon, exec_horizon
        self.train_steps, self.sample_steps, self.start_steps = train_steps, sample_steps, start_steps
        self.constant_prob, self.clip_sample = constant_prob, clip_sample
        self.alphas_cumprod = cosine_alphas_cumprod(train_steps)
        self._alpha_table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])   # level -1: 1
        self.tops = torch.tensor(chunk_tops(train_steps, self.chunks))
        below = torch.tensor([-1] + chunk_tops(train_steps, list(range(self.num_chunks))))[torch.tensor(self.chunks)]
        self.widths = self.tops - below     # timesteps of each element's band (N // h or one more)
        self.buffer: torch.Tensor | None = None
        self.calls = 0                      # denoiser calls of the last sample()

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        s = cfg.streaming
        return cls(cfg.pred_horizon, cfg.obs_horizon, cfg.exec_horizon, cfg.diffusion_steps, cfg.sample_steps,
                   s.start_steps, s.constant_prob, cfg.clip_sample)

    def check_steps(self, steps: int) -> None:
        super().check_steps(steps)
        if steps > self.band:
            raise ValueError(f"a streaming policy takes 1 to {self.band} calls per replan (one chunk's band of "
                             f"timesteps), got {steps}")

    def reference_steps(self) -> int:
        return self.band                    # one call per timestep of the band (the paper's sampler)

    def level_range(self) -> float:
        return float(self.train_steps)

    def check_policy(self, obs_horizon: int, pred_horizon: int, action_dim: int) -> None:
        for key, mine, theirs in (("obs_horizon", self.obs_horizon, obs_horizon),
                                  ("pred_horizon", self.pred_horizon, pred_horizon)):
            if mine != theirs:
                raise ValueError(f"'process.{key}' is {mine}, the policy's {key} {theirs}")

    # --- levels ---------------------------------------------------------------------------------

    def step_levels(self) -> list[torch.Tensor]:
        """The (Tp,) levels of each call of a replan, then the levels it ends at: each element at the top
        of the band below its own (chunk 0: -1, clean)."""
        return [self.tops - (s * self.widths) // self.sample_steps for s in range(self.sample_steps + 1)]

    def levels(self) -> list[float]:
        """Mean level per call (for step-indexed caches, which key on the schedule)."""
        return [float(lv.float().mean()) for lv in self.step_levels()[:-1]]

    def _alpha(self, level: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Cumulative alpha per element (level -1: clean, 1) of levels (Tp,) or (B, Tp), as (1 or B, Tp, 1)."""
        a = self._alpha_table[(level + 1).long().cpu()].to(like.device, like.dtype)
        return (a[None] if a.ndim == 1 else a)[..., None]

    # --- training -------------------------------------------------------------------------------

    def training_levels(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(B, Tp) long: each sample constant (p = constant_prob) or chunk-wise with a shared offset."""
        constant = torch.randint(0, self.train_steps, (batch, 1), generator=generator, device=device)
        offset = torch.randint(0, self.band, (batch, 1), generator=generator, device=device)
        chunkwise = self.tops.to(device)[None] - offset
        pick = torch.rand((batch, 1), generator=generator, device=device) < self.constant_prob
        return torch.where(pick, constant.expand(-1, self.pred_horizon), chunkwise)

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
             ) -> torch.Tensor:
        level = self.training_levels(x0.shape[0], generator, x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        a = self._alpha(level, x0)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        return F.mse_loss(net(x_t, level.to(x0.dtype), cond), eps)

    # --- sampling -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the buffer: the next call starts a new episode."""
        self.buffer = None

    def keep_rows(self, rows) -> None:
        """Keep the buffers of these batch rows only (episodes that ended drop out of a batch)."""
        if self.buffer is not None:
            self.buffer = self.buffer[torch.as_tensor(rows, dtype=torch.long, device=self.buffer.device)]

    def _ddim(self, net, x, level, next_level, cond, step, known, noise0):
        a, a_next = self._alpha(level, x), self._alpha(next_level, x)
        eps = net(x, level.to(x.device, x.dtype), cond, step=step)
        x = ddim_step(x, a, a_next, eps=eps, clip_sample=self.clip_sample)
        if known is not None:
            x = known.impose(x, noise0, a_next.sqrt(), (1 - a_next).sqrt())
        return x

    def _start(self, net, cond, shape, generator, noise, known) -> torch.Tensor:
        """A fresh buffer at the band tops: DDIM at one shared level from N - 1 down to chunk 0's top
        (the constant regime); each chunk keeps the state the trajectory had at its own top."""
        b = shape[0]
        x = torch.randn(shape, generator=generator, device=cond.device) if noise is None else noise.clone()
        noise0 = x.clone()
        top0, last = int(self.tops[0]), self.train_steps - 1
        grid = {last - ((last - top0) * s) // self.start_steps for s in range(self.start_steps + 1)}
        grid = sorted(grid | {int(t) for t in self.tops}, reverse=True)
        buffer = x.clone()                      # chunk h - 1's top is N - 1: the noise itself
        for t, t_next in zip(grid[:-1], grid[1:]):
            level = torch.full((b, self.pred_horizon), t)
            x = self._ddim(net, x, level, torch.full_like(level, t_next), cond, None, known, noise0)
            self.calls += 1
            at_top = (self.tops == t_next).to(x.device)
            buffer[:, at_top] = x[:, at_top]
        return buffer

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None) -> torch.Tensor:
        self.calls = 0
        if self.buffer is None or tuple(self.buffer.shape) != tuple(shape) or self.buffer.device != cond.device:
            self.buffer = self._start(net, cond, shape, generator, noise, known)
        x = self.buffer
        noise0 = torch.randn(shape, generator=generator, device=cond.device) if known is not None else None
        levels = self.step_levels()
        b = shape[0]
        for s in range(self.sample_steps):
            x = self._ddim(net, x, levels[s].expand(b, -1), levels[s + 1].expand(b, -1), cond, s, known, noise0)
            self.calls += 1
        out = x.clone()
        self.buffer = self._shift(x, generator)
        return out

    def _shift(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Roll the buffer by ``Ta``: observation-aligned slots noised to chunk 0's top, fresh noise
        where the last chunk begins."""
        ta, start = self.exec_horizon, self.obs_horizon - 1
        shifted = torch.cat([x[:, ta:], torch.zeros_like(x[:, :ta])], dim=1)
        fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        last = start + (self.num_chunks - 1) * ta
        shifted[:, last:] = fresh[:, last:]
        if start:
            a = math.sqrt(float(self.alphas_cumprod[int(self.tops[0])]))
            shifted[:, :start] = a * shifted[:, :start] + math.sqrt(1 - a * a) * fresh[:, :start]
        return shifted
