"""1-D temporal UNet with FiLM conditioning (the Diffusion Policy CNN design).

``forward(x, level, cond, step=None)``: ``x`` (B, Tp, Da) noisy action chunk, ``level`` (B,)
noise level or (B, Tp) one per action step, ``cond`` (B, Dc) encoded observation -> (B, Tp, Da);
``step`` (the sampling step index, used by step-indexed caches) does not change this network.
Each residual block modulates its features with a per-channel scale and bias computed from
[level embedding, cond]. With per-step levels the conditioning is per time position: each
block averages it over the positions its (downsampled) feature map covers, so equal levels
give exactly the per-sample conditioning.
The chunk length must be divisible by 2 ** (len(down_dims) - 1).

Precomputed conditioning (``precompute_conditioning = True``, what the ``*-precond`` runtimes set):
a block's FiLM layer is ``Linear(mish([level embedding, cond]))``, which splits into a level term
and a cond term. :meth:`prepare_sampling` computes the level terms of every block for the whole
schedule once; the cond terms are computed at the first step of a chunk and reused while the same
``cond`` tensor comes back. Each step then adds two stored vectors instead of running the level
MLP and every FiLM layer: the same result up to float rounding. Per-step levels, training, or a
level other than the schedule's at that step use the direct path.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import SinusoidalEmbedding


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2),
                         nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv1 = ConvNormAct(c_in, c_out, kernel, groups)
        self.conv2 = ConvNormAct(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor, modulation: torch.Tensor | None = None) -> torch.Tensor:
        """``cond`` (B, F) per sample, or (B, F, T) per time position (pooled to this resolution);
        ``modulation`` (B, 2 C): the FiLM layer's output, precomputed (``cond`` is then unused)."""
        h = self.conv1(x)
        if modulation is not None:
            scale, bias = modulation[..., None].chunk(2, dim=1)
        elif cond.ndim == 3:
            if cond.shape[-1] != h.shape[-1]:
                cond = F.adaptive_avg_pool1d(cond, h.shape[-1])
            scale, bias = self.film(cond.transpose(1, 2)).transpose(1, 2).chunk(2, dim=1)
        else:
            scale, bias = self.film(cond)[..., None].chunk(2, dim=1)
        h = self.conv2(h * scale + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, action_dim: int, cond_dim: int, down_dims: Sequence[int] = (32, 64, 128),
                 kernel_size: int = 5, n_groups: int = 8, level_embed_dim: int = 64):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (its padding keeps the length), got {kernel_size}")
        self.spec = {"action_dim": action_dim, "cond_dim": cond_dim, "down_dims": [int(d) for d in down_dims],
                     "kernel_size": kernel_size, "n_groups": n_groups, "level_embed_dim": level_embed_dim}
        self.down_factor = 2 ** (len(down_dims) - 1)
        self.level_embed = nn.Sequential(SinusoidalEmbedding(level_embed_dim),
                                         nn.Linear(level_embed_dim, 4 * level_embed_dim), nn.Mish(),
                                         nn.Linear(4 * level_embed_dim, level_embed_dim))
        film_dim = level_embed_dim + cond_dim
        dims = [action_dim, *down_dims]
        block = lambda a, b: FiLMResidualBlock(a, b, film_dim, kernel_size, n_groups)  # noqa: E731

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([block(c_in, c_out), block(c_out, c_out),
                                             nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, 2, 1)]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for c_out, c_in in zip(reversed(down_dims[:-1]), reversed(down_dims[1:])):
            self.up.append(nn.ModuleList([block(2 * c_in, c_out), block(c_out, c_out),
                                          nn.ConvTranspose1d(c_out, c_out, 4, 2, 1)]))
        self.head = nn.Sequential(ConvNormAct(down_dims[0], down_dims[0], kernel_size, n_groups),
                                  nn.Conv1d(down_dims[0], action_dim, 1))
        self.level_embed_dim = level_embed_dim
        self.precompute_conditioning = False
        self._level_terms: dict | None = None       # {"key", "levels", "terms": (S, film_dim)}
        self._cond_terms: dict | None = None        # {"cond", "version", "terms": (B, film_dim)}

    def _film_blocks(self) -> list[FiLMResidualBlock]:
        """The residual blocks in the order forward calls them (down, mid, up)."""
        return [*(b for res1, res2, _ in self.down for b in (res1, res2)), *self.mid,
                *(b for res1, res2, _ in self.up for b in (res1, res2))]

    @property
    def film_dim(self) -> int:
        """The length of all blocks' FiLM outputs side by side (2 C per block)."""
        return sum(self._film_sizes)

    def level_terms(self, levels: torch.Tensor) -> torch.Tensor:
        """(S,) levels -> (S, film_dim): every block's FiLM term of the level, its bias included."""
        emb, e = F.mish(self.level_embed(levels)), self.level_embed_dim
        return torch.cat([F.linear(emb, b.film[1].weight[:, :e], b.film[1].bias) for b in self._film_blocks()], -1)

    def cond_terms(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, Dc) observation conditioning -> (B, film_dim): every block's FiLM term of it."""
        c, e = F.mish(cond), self.level_embed_dim
        return torch.cat([F.linear(c, b.film[1].weight[:, e:]) for b in self._film_blocks()], -1)

    def _weights_key(self) -> tuple:
        params = [*self.level_embed.parameters(), *(p for b in self._film_blocks() for p in b.film.parameters())]
        return tuple((p.data_ptr(), p.dtype, p._version) for p in params)

    @torch.no_grad()
    def prepare_sampling(self, levels: Sequence[float]) -> bool:
        """With ``precompute_conditioning``: the level terms of the schedule ``levels`` (the levels
        at steps 0, 1, ...). Returns whether they were (re)computed."""
        if not self.precompute_conditioning:
            self._level_terms = self._cond_terms = None
            return False
        key = (tuple(float(v) for v in levels), self._weights_key())
        if self._level_terms is not None and self._level_terms["key"] == key:
            return False
        levels_t = torch.tensor(key[0], device=self.head[-1].weight.device, dtype=torch.float32)
        self._level_terms = {"key": key, "levels": levels_t, "terms": self.level_terms(levels_t)}
        self._cond_terms = None
        return True

    def _precomputed(self, level: torch.Tensor, cond: torch.Tensor, step: int | None) -> torch.Tensor | None:
        """All blocks' FiLM outputs (B, film_dim) from the stored terms, or None where the direct path runs."""
        stored = self._level_terms
        if (stored is None or step is None or self.training or level.ndim > 1 or cond.ndim != 2
                or not 0 <= step < len(stored["levels"])
                or not bool((level.to(stored["levels"].dtype) == stored["levels"][step]).all())):
            return None
        cached = self._cond_terms
        if cached is None or cached["cond"] is not cond or cached["version"] != cond._version:
            cached = self._cond_terms = {"cond": cond, "version": cond._version, "terms": self.cond_terms(cond)}
        return stored["terms"][step] + cached["terms"]

    def modulated(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """The network with every block's FiLM output given: ``film`` (B, film_dim), as
        ``level_terms(level) + cond_terms(cond)``; (B, Tp, Da) -> (B, Tp, Da)."""
        return self._body(x, None, iter(film.split(self._film_sizes, dim=-1)))

    @property
    def _film_sizes(self) -> list[int]:
        return [b.film[1].out_features for b in self._film_blocks()]

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None
                ) -> torch.Tensor:
        self._check_length(x)
        precomputed = self._precomputed(level, cond, step)
        if precomputed is not None:
            return self.modulated(x, precomputed)
        return self._body(x, self._film_input(x, level, cond), itertools.repeat(None))

    def taps(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor
             ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The forward pass with what it computes on the way: (the output (B, Tp, Da), each down stage's
        output before downsampling (B, C_i, T_i), the middle blocks' output (B, C, T / down_factor))."""
        self._check_length(x)
        taps: list[torch.Tensor] = []
        out = self._body(x, self._film_input(x, level, cond), itertools.repeat(None), taps)
        return out, taps[:-1], taps[-1]

    def _check_length(self, x: torch.Tensor) -> None:
        if x.shape[1] % self.down_factor:
            raise ValueError(f"chunk length {x.shape[1]} must be divisible by {self.down_factor}")

    def _film_input(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """[level embedding, cond]: (B, F), or (B, F, Tp) with per-step levels."""
        b, tp = x.shape[:2]
        if level.ndim == 2:
            if tuple(level.shape) != (b, tp):
                raise ValueError(f"per-step levels must be (B, Tp) = {(b, tp)}, got {tuple(level.shape)}")
            return torch.cat([self.level_embed(level), cond[:, None].expand(-1, tp, -1)], dim=-1).transpose(1, 2)
        if level.ndim <= 1:
            return torch.cat([self.level_embed(level.expand(b)), cond], dim=-1)
        raise ValueError(f"level must be (B,) or (B, Tp), got {tuple(level.shape)}")

    def _body(self, x: torch.Tensor, film: torch.Tensor | None, mods, taps: list | None = None) -> torch.Tensor:
        """The blocks, each modulated by ``film`` (the FiLM input) or by its precomputed output from
        ``mods``; ``taps``: appended each down stage's output and the middle blocks' output."""
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, downsample in self.down:
            h = res2(res1(h, film, next(mods)), film, next(mods))
            skips.append(h)
            h = downsample(h)
        for res in self.mid:
            h = res(h, film, next(mods))
        if taps is not None:
            taps.extend([*skips, h])
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(res2(res1(h, film, next(mods)), film, next(mods)))
        return self.head(h).transpose(1, 2)
