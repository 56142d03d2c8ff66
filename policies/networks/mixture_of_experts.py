"""Noise-conditioned mixture of denoising experts (MoDE, Reuss et al. 2025) and its expert cache.

The router sees only the noise-level embedding ``c`` (B, D): Linear(D, 2D) -> GELU ->
Linear(2D, E) -> softmax. Each sample's tokens all go to the same ``top_k`` of ``E`` SwiGLU
experts, weighted by their renormalised probabilities (training draws the experts with
``torch.multinomial`` for exploration, inference takes the top-k). Routing per sample is the
reference's per-token routing computed once: every token of a sample carries the same ``c``.

Load balancing (per layer): ``L = E * sum_i mean(p~_i) * f_i`` with ``p~`` the masked,
renormalised routing weights and ``f_i`` the fraction of tokens sent to expert ``i``; it is
``top_k`` when routing is uniform.

Expert cache: for a fixed sampling schedule the routing at step ``i`` is known in advance, so
the selected experts are fused into one dense SwiGLU per step -- their gate and up weights
stacked, their down weights scaled by the routing weights and concatenated:
``sum_j w_j E_j(h) = [w_1 W_down_1 | w_2 W_down_2] (silu([G_1; G_2] h) * [U_1; U_2] h)``.
The fused weights of all steps sit in (K, k*H, D) tensors indexed by the step index.

Under ``torch.export`` (ONNX export) the mixture runs every expert with the unrouted ones
weighted 0: the same result with static shapes, valid for any schedule, at ``E / top_k`` times
the feed-forward cost; the expert cache is a PyTorch-runtime speed-up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """``down(silu(gate(h)) * up(h))``, no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(h)) * self.up(h))


@dataclass(frozen=True)
class Routing:
    experts: torch.Tensor   # (B, k) long: chosen experts
    weights: torch.Tensor   # (B, k): their renormalised probabilities (sum 1 per row)
    probs: torch.Tensor     # (B, E): the router's softmax


def balance_loss(routing: Routing, num_experts: int) -> torch.Tensor:
    """``E * sum_i mean_b(p~_bi) * f_i`` (equals top_k for uniform routing)."""
    b = routing.experts.shape[0]
    masked = torch.zeros(b, num_experts, device=routing.weights.device, dtype=routing.weights.dtype)
    masked = masked.scatter(1, routing.experts, routing.weights)
    fraction = torch.zeros_like(masked).scatter(1, routing.experts, 1.0).mean(0).detach()
    return num_experts * (masked.mean(0) * fraction).sum()


class MixtureOfExperts(nn.Module):
    """Residual branch ``forward(x (B, S, D), ctx) -> (B, S, D)``: RMSNorm, then the routed experts.
    ``ctx`` needs ``c`` (B, D), ``step`` and ``cached`` (see :class:`.transformer.BranchContext`)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"need 1 <= top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}")
        self.num_experts, self.top_k = num_experts, top_k
        self.norm = nn.RMSNorm(dim)
        self.router = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, num_experts))
        self.experts = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(num_experts))
        self.last_balance_loss: torch.Tensor | None = None
        self._fused: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def route(self, c: torch.Tensor, sample: bool = False) -> Routing:
        probs = self.router(c).softmax(-1)
        if sample:
            experts = torch.multinomial(probs.detach(), self.top_k, replacement=False)
        else:
            experts = probs.topk(self.top_k, dim=-1).indices
        weights = probs.gather(1, experts)
        return Routing(experts, weights / weights.sum(-1, keepdim=True), probs)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        h = self.norm(x)
        if ctx.cached:
            gate, up, down = (w[ctx.step] for w in self._fused)
            return F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)
        routing = self.route(ctx.c, sample=self.training)
        if self.training:
            self.last_balance_loss = balance_loss(routing, self.num_experts)
        if torch.compiler.is_exporting():
            return self._all_experts(h, routing)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            weight = (routing.weights * (routing.experts == e)).sum(-1)          # (B,)
            rows = weight.nonzero().squeeze(-1)
            if rows.numel():
                out = out.index_add(0, rows, weight[rows].view(-1, 1, 1).to(h.dtype) * expert(h[rows]))
        return out

    def _all_experts(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The same mixture with static shapes (for export): every expert runs, the unrouted ones
        with weight 0. Exact, but it costs all ``E`` experts instead of ``top_k``."""
        weights = torch.zeros_like(routing.probs).scatter(1, routing.experts, routing.weights)     # (B, E)
        return sum(weights[:, e].view(-1, 1, 1) * expert(h) for e, expert in enumerate(self.experts))

    # --- expert cache ---------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self, c_steps: torch.Tensor) -> None:
        """Build the fused per-step experts for the noise embeddings ``c_steps`` (K, D) of a schedule."""
        routing = self.route(c_steps)
        gates, ups, downs = [], [], []
        for experts, weights in zip(routing.experts.tolist(), routing.weights):
            chosen = [self.experts[e] for e in experts]
            gates.append(torch.cat([m.gate.weight for m in chosen]))
            ups.append(torch.cat([m.up.weight for m in chosen]))
            downs.append(torch.cat([w * m.down.weight for w, m in zip(weights, chosen)], dim=1))
        self._fused = (torch.stack(gates), torch.stack(ups), torch.stack(downs))

    def clear_cache(self) -> None:
        self._fused = None
