"""DiT-style transformer denoiser, dense or with a mixture of denoising experts (MoDE).

``forward(x, level, cond, step=None)``: ``x`` (B, Tp, Da) noisy action chunk, ``level`` (B,)
noise level or (B, Tp) one per action step, ``cond`` (B, Dc) encoded observation -> (B, Tp, Da).
Per-step levels condition each action token's self-attention on its own level embedding; the
noise token, the observation tokens and MoDE's routers see the embedding of the mean level, so
equal levels give exactly the per-sample network. MoDE's expert cache (keyed by step) is not
used with per-step levels.

Tokens: a noise token ``c`` (the level embedding), ``cond_tokens`` observation tokens
(a linear map of ``cond``) and one token per action step, with learned positions. With
``cross_attention`` the observation tokens are a memory the sequence attends to; otherwise
they sit in the sequence ``[c, obs..., actions...]`` (MoDE's layout). ``attention="causal"``
lets every token see only the ones before it.

Each block is three residual branches, separate modules with one signature
``branch(x, ctx) -> residual`` (:class:`TransformerBlock`), named ``blocks.<i>.<branch>``
(:meth:`TransformerDenoiser.branch_keys`):

- ``self_attn``: noise-conditioned self-attention, ``Attn(RMSNorm(x) + c)``;
- ``cross_attn`` (optional): ``Attn(RMSNorm(x), memory)``;
- ``ffn``: RMSNorm then a SwiGLU, or :class:`MixtureOfExperts` routed by ``c`` alone.

Expert caching (MoDE): :meth:`TransformerDenoiser.prepare_sampling` takes the levels a
process will sample at and fuses each layer's selected experts per step; calls that pass a
``step`` index then use the fused layer of that step and the stored noise embedding. The
cache is rebuilt when the schedule or any weight changes and is never used in training.

Branch caches (block-wise caching, BAC): ``denoiser.branch_cache`` (None by default) is an
object with ``prepare(levels) -> bool`` and ``residual(key, step, x, compute) -> tensor``. In a
sampling call (``step`` given, eval mode) every residual branch goes through it: it may run
``compute()`` (the branch, dropout included) or return a residual it stored at an earlier step
of the same chunk (see :mod:`cadence.policies.caching`). Training never uses it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import SinusoidalEmbedding
from .mixture_of_experts import MixtureOfExperts, SwiGLU

ATTENTION = ("full", "causal")
MAX_EXPERT_CACHE = 5 * 10 ** 8      # values of the fused per-step experts (2 GB of float32); beyond: no cache

log = logging.getLogger(__name__)


@dataclass
class BranchContext:
    c: torch.Tensor                    # (B, D) noise-level embedding (of the mean level when per step)
    memory: torch.Tensor | None        # (B, M, D) observation tokens (cross-attention)
    mask: torch.Tensor | None          # (S, S) bool, True where attention is allowed
    step: int | None                   # sampling step index (None in training)
    cached: bool = False               # use the step-indexed expert cache
    cache: object | None = None        # the branch cache (BAC) consulted for every residual branch
    c_tokens: torch.Tensor | None = None   # (B, S, D) per-token level embedding (per-step levels), else None


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"d_model ({dim}) must be divisible by n_heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def attend(self, query: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, d = query.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        k, v = self.kv(source).chunk(2, dim=-1)
        h = F.scaled_dot_product_attention(split(self.q(query)), split(k), split(v), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(h.transpose(1, 2).reshape(b, s, d))


class SelfAttention(_Attention):
    """Noise-conditioned self-attention branch: ``Attn(RMSNorm(x) + c)``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__(dim, heads, dropout)
        self.norm = nn.RMSNorm(dim)

    def forward(self, x: torch.Tensor, ctx: BranchContext) -> torch.Tensor:
        h = self.norm(x) + (ctx.c[:, None, :] if ctx.c_tokens is None else ctx.c_tokens)
        return self.attend(h, h, ctx.mask)


class CrossAttention(_Attention):
    """Cross-attention branch from the sequence to the observation memory."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__(dim, heads, dropout)
        self.norm = nn.RMSNorm(dim)

    def forward(self, x: torch.Tensor, ctx: BranchContext) -> torch.Tensor:
        return self.attend(self.norm(x), ctx.memory, None)


class FeedForward(nn.Module):
    """Dense feed-forward branch: RMSNorm then SwiGLU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, ctx: BranchContext) -> torch.Tensor:
        return self.mlp(self.norm(x))


class TransformerBlock(nn.Module):
    BRANCHES = ("self_attn", "cross_attn", "ffn")

    def __init__(self, self_attn: nn.Module, cross_attn: nn.Module | None, ffn: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.self_attn, self.cross_attn, self.ffn = self_attn, cross_attn, ffn
        self.drop = nn.Dropout(dropout)
        self.cache_keys = {name: name for name in self.BRANCHES}   # the denoiser prefixes them with blocks.<i>.

    def branches(self) -> list[str]:
        """Names of the residual branches this block runs, in order."""
        return [name for name in self.BRANCHES if getattr(self, name) is not None]

    def forward(self, x: torch.Tensor, ctx: BranchContext) -> torch.Tensor:
        cache = ctx.cache
        for name in self.branches():
            branch = getattr(self, name)
            if cache is None:
                x = x + self.drop(branch(x, ctx))
            else:
                x = x + cache.residual(self.cache_keys[name], ctx.step, x,
                                       lambda branch=branch, x=x: self.drop(branch(x, ctx)))
        return x


class TransformerDenoiser(nn.Module):
    def __init__(self, action_dim: int, cond_dim: int, horizon: int, d_model: int = 128, n_layers: int = 4,
                 n_heads: int = 4, cond_tokens: int = 2, attention: str = "full", cross_attention: bool = False,
                 ffn_mult: int = 4, dropout: float = 0.0, num_experts: int = 0, top_k: int = 2,
                 balance_weight: float = 0.01, expert_cache: bool = True):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        if cond_tokens < 1 or n_layers < 1 or horizon < 1:
            raise ValueError(f"need cond_tokens, n_layers and horizon >= 1, got {cond_tokens}, {n_layers}, {horizon}")
        self.horizon, self.d_model, self.cond_tokens = horizon, d_model, cond_tokens
        self.cross_attention, self.num_experts = cross_attention, num_experts
        self.balance_weight, self.expert_cache = balance_weight, expert_cache
        self.level_embed = nn.Sequential(SinusoidalEmbedding(d_model), nn.Linear(d_model, d_model), nn.SiLU(),
                                         nn.Linear(d_model, d_model))
        self.action_in = nn.Linear(action_dim, d_model)
        self.cond_in = nn.Linear(cond_dim, cond_tokens * d_model)
        seq_len = 1 + horizon + (0 if cross_attention else cond_tokens)
        self.pos = nn.Parameter(torch.zeros(1, seq_len, d_model))
        self.memory_pos = nn.Parameter(torch.zeros(1, cond_tokens, d_model)) if cross_attention else None
        nn.init.normal_(self.pos, std=0.02)
        if self.memory_pos is not None:
            nn.init.normal_(self.memory_pos, std=0.02)
        hidden = ffn_mult * d_model

        def ffn():
            return MixtureOfExperts(d_model, hidden, num_experts, top_k) if num_experts else FeedForward(d_model, hidden)
        self.blocks = nn.ModuleList(
            TransformerBlock(SelfAttention(d_model, n_heads, dropout),
                             CrossAttention(d_model, n_heads, dropout) if cross_attention else None, ffn(), dropout)
            for _ in range(n_layers))
        for i, block in enumerate(self.blocks):
            block.cache_keys = {name: f"blocks.{i}.{name}" for name in block.BRANCHES}
        self.branch_cache = None           # a block-wise cache (BAC), see the module docstring
        self.norm_out = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, action_dim)
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool).tril() if attention == "causal" else None
        self.register_buffer("mask", mask, persistent=False)
        self._cache: dict | None = None
        self._cache_params: list | None = None

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None
                ) -> torch.Tensor:
        b, tp, _ = x.shape
        if tp != self.horizon:
            raise ValueError(f"chunk length {tp} differs from the denoiser's horizon {self.horizon}")
        per_step = level.ndim == 2
        if per_step and tuple(level.shape) != (b, tp):
            raise ValueError(f"per-step levels must be (B, Tp) = {(b, tp)}, got {tuple(level.shape)}")
        if level.ndim > 2:
            raise ValueError(f"level must be (B,) or (B, Tp), got {tuple(level.shape)}")
        cached = self._use_cache(step) and not per_step
        if cached:
            c = self._cache["c"][step].expand(b, -1)
        else:
            c = self.level_embed(level.mean(dim=1) if per_step else level.expand(b))
        obs = self.cond_in(cond).view(b, self.cond_tokens, self.d_model)
        parts = [c[:, None, :], self.action_in(x)] if self.cross_attention else [c[:, None, :], obs, self.action_in(x)]
        h = torch.cat(parts, dim=1) + self.pos
        memory = obs + self.memory_pos if self.cross_attention else None
        cache = self.branch_cache if step is not None and not self.training else None
        c_tokens = None
        if per_step:          # noise (and observation) tokens: the mean level; action tokens: their own
            lead = h.shape[1] - tp
            c_tokens = torch.cat([c[:, None, :].expand(-1, lead, -1), self.level_embed(level)], dim=1)
        ctx = BranchContext(c, memory, self.mask, step, cached, cache, c_tokens)
        for block in self.blocks:
            h = block(h, ctx)
        return self.head(self.norm_out(h[:, -tp:]))

    def branch_keys(self) -> list[str]:
        """Every residual branch, in the order a call runs them: ``blocks.<i>.<branch>``."""
        return [block.cache_keys[name] for block in self.blocks for name in block.branches()]

    def aux_loss(self) -> torch.Tensor | float:
        """``balance_weight`` x the mean load-balancing loss of the last training forward (0 if dense)."""
        losses = [m.last_balance_loss for m in self._moe_layers() if m.last_balance_loss is not None]
        return self.balance_weight * torch.stack(losses).mean() if losses else 0.0

    @torch.no_grad()
    def expert_routing(self, levels: Sequence[float]) -> list:
        """Inference routing of every MoE layer at each level: ``[layer][level] -> [(expert, weight), ...]``."""
        c = self.level_embed(torch.tensor([float(v) for v in levels], device=self.head.weight.device))
        table = []
        for layer in self._moe_layers():
            r = layer.route(c)
            table.append([list(zip(e.tolist(), [round(v, 4) for v in w.tolist()])) for e, w in zip(r.experts, r.weights)])
        return table

    # --- expert cache -----------------------------------------------------------------------------
    def _moe_layers(self) -> list[MixtureOfExperts]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MixtureOfExperts)]

    def _weights_key(self) -> tuple:
        """Changes when any weight the cache is built from changes (in place, or moved / recast)."""
        if self._cache_params is None:      # the module walk costs more than the key: list them once
            self._cache_params = [*self.level_embed.parameters(), *(p for m in self._moe_layers() for p in m.parameters())]
        return tuple((p.data_ptr(), p.dtype, p._version) for p in self._cache_params)

    def _use_cache(self, step: int | None) -> bool:
        if self._cache is None or step is None or self.training:
            return False
        if not 0 <= step < len(self._cache["levels"]):
            raise IndexError(f"sampling step {step} outside the expert cache's {len(self._cache['levels'])} steps; "
                             "call prepare_sampling(process.levels()) for this schedule")
        return True

    def prepare_sampling(self, levels: Sequence[float]) -> bool:
        """Ready the step-indexed caches for the schedule ``levels`` (what the process passes at steps
        0, 1, ...): the fused experts and the branch cache's update steps. Returns whether either
        was (re)built (captured CUDA graphs must then be captured again)."""
        rebuilt = self._prepare_experts(levels)
        if self.branch_cache is not None:
            rebuilt = self.branch_cache.prepare(levels) or rebuilt
        return rebuilt

    @torch.no_grad()
    def _prepare_experts(self, levels: Sequence[float]) -> bool:
        """Fuse each MoE layer's experts for every step of ``levels``. No-op when dense, disabled, or
        already built for these levels and weights; returns whether the cache was (re)built."""
        if not (self.num_experts and self.expert_cache):
            if self._cache is not None:
                self.clear_expert_cache()
            return False
        key = (tuple(float(v) for v in levels), self._weights_key())
        if self._cache is not None and self._cache["key"] == key:
            return False
        size = len(key[0]) * sum(3 * layer.top_k * layer.experts[0].gate.weight.numel() for layer in self._moe_layers())
        if size > MAX_EXPERT_CACHE:         # e.g. 100,000 steps: route at every step instead of fusing them all
            if self._cache is not None:
                self.clear_expert_cache()
            log.warning("expert cache of %s values for %d steps is more than %s: experts are routed at every "
                        "step instead", f"{size:,}", len(key[0]), f"{MAX_EXPERT_CACHE:,}")
            return False
        device = self.head.weight.device
        c = self.level_embed(torch.tensor(key[0], device=device, dtype=torch.float32))
        for layer in self._moe_layers():
            layer.fuse(c)
        self._cache = {"key": key, "levels": key[0], "c": c.to(self.head.weight.dtype)}
        return True

    def clear_expert_cache(self) -> None:
        self._cache = None
        for layer in self._moe_layers():
            layer.clear_cache()

    def train(self, mode: bool = True):
        if mode:
            self.clear_expert_cache()
            if self.branch_cache is not None:
                self.branch_cache.clear()
        return super().train(mode)
