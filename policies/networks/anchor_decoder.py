"""Cascade decoder of truncated anchor diffusion: every anchor refined at once, with a confidence.

``forward(x, level, cond, step=None) -> (chunks, logits)``: ``x`` (B, K, Tp, Da) the K noisy
anchors (normalised), ``level`` (B,) their diffusion timestep, ``cond`` (B, Dc) the encoded
observation -> ``chunks`` (B, K, Tp, Da) the refined (clean) chunk of each mode and
``logits`` (B, K) each mode's confidence.

One query per mode (DiffusionDrive's layout, adapted to action chunks): the mode's current
chunk is embedded by an MLP and added to its query; each layer then does cross-attention
from the queries to ``cond_tokens`` observation tokens, a SwiGLU feed-forward, a FiLM
modulation by the timestep embedding, and heads for an offset (the refined chunk is the
layer's input chunk plus the offset) and the confidence logit. The next layer takes the
previous layer's refined chunk, detached, as its input chunk (the cascade). Modes do not
attend to each other, so each mode's outputs depend on its own input only.
:meth:`layer_outputs` returns every layer's outputs (training sums a loss over them).
"""
from __future__ import annotations

import torch
from torch import nn

from .embeddings import SinusoidalEmbedding
from .transformer import BranchContext, CrossAttention, FeedForward


class _DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ffn_mult: int, chunk: int, dropout: float):
        super().__init__()
        self.cross_attn = CrossAttention(d_model, heads, dropout)
        self.ffn = FeedForward(d_model, ffn_mult * d_model)
        self.film = nn.Linear(d_model, 2 * d_model)
        self.offset = nn.Linear(d_model, chunk)
        self.logit = nn.Linear(d_model, 1)
        for head in (self.film, self.offset):       # start as the identity: chunk = input, no modulation
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, level: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx = BranchContext(c=level, memory=memory, mask=None, step=None)
        q = q + self.cross_attn(q, ctx)
        q = q + self.ffn(q, ctx)
        scale, shift = self.film(level).unsqueeze(1).chunk(2, dim=-1)
        q = q * (1 + scale) + shift
        return q, self.offset(q), self.logit(q).squeeze(-1)


class AnchorDecoder(nn.Module):
    def __init__(self, action_dim: int, pred_horizon: int, cond_dim: int, d_model: int = 256, n_layers: int = 2,
                 n_heads: int = 4, cond_tokens: int = 4, ffn_mult: int = 4, level_embed_dim: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        if n_layers < 1 or cond_tokens < 1:
            raise ValueError(f"need n_layers >= 1 and cond_tokens >= 1, got {n_layers} and {cond_tokens}")
        self.action_dim, self.pred_horizon = action_dim, pred_horizon
        chunk = pred_horizon * action_dim
        self.cond_tokens, self.d_model = cond_tokens, d_model
        self.point_embed = nn.Sequential(nn.Linear(chunk, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.cond_proj = nn.Linear(cond_dim, cond_tokens * d_model)
        self.cond_pos = nn.Parameter(torch.randn(cond_tokens, d_model) * 0.02)
        self.level_embed = nn.Sequential(SinusoidalEmbedding(level_embed_dim), nn.Linear(level_embed_dim, d_model),
                                         nn.SiLU(), nn.Linear(d_model, d_model))
        self.layers = nn.ModuleList(_DecoderLayer(d_model, n_heads, ffn_mult, chunk, dropout)
                                    for _ in range(n_layers))

    def layer_outputs(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if x.ndim != 4 or x.shape[2:] != (self.pred_horizon, self.action_dim):
            raise ValueError(f"x must be (B, K, Tp={self.pred_horizon}, Da={self.action_dim}), got {tuple(x.shape)}")
        b, k = x.shape[:2]
        level = level.expand(b) if level.ndim == 0 else level
        memory = self.cond_proj(cond).view(b, self.cond_tokens, self.d_model) + self.cond_pos
        c = self.level_embed(level)
        points = x.reshape(b, k, -1)
        q = torch.zeros(b, k, self.d_model, device=x.device, dtype=memory.dtype)
        outputs = []
        for layer in self.layers:
            q, offset, logits = layer(q + self.point_embed(points), memory, c)
            refined = points + offset
            outputs.append((refined.view(b, k, self.pred_horizon, self.action_dim), logits))
            points = refined.detach()
        return outputs

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer_outputs(x, level, cond)[-1]
