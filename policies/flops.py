"""FLOPs of a denoiser by component, counted by PyTorch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products, convolutions and
attention kernels a call actually runs (elementwise work is not counted), so a mixture of
experts is charged only for the experts it routes to, and a cached (fused) expert layer for
its fused weights. Counts are attributed by module path: each transformer block's residual
branches (``self_attn``, ``cross_attn``, ``ffn``), the MoE ``router`` (inside ``ffn``, reported
apart), and ``other`` (level embedding, input and output projections; all of a UNet).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .networks.mixture_of_experts import MixtureOfExperts

COMPONENTS = ("self_attn", "cross_attn", "ffn", "router", "other", "total")

# PyTorch's table has the CUDA attention kernels but not the CPU one; same formula (QK^T and AV).
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                  lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}


def active_parameters(net: nn.Module, cached: bool = False) -> int:
    """Parameters one denoiser call reads: all of them, less the experts a mixture does not route
    to (``num_experts - top_k`` per layer) and, with the expert cache, less the router and the
    level embedding (their results are stored per step)."""
    total = sum(p.numel() for p in net.parameters())
    for layer in (m for m in net.modules() if isinstance(m, MixtureOfExperts)):
        per_expert = sum(p.numel() for p in layer.experts[0].parameters())
        total -= (layer.num_experts - layer.top_k) * per_expert
        if cached:
            total -= sum(p.numel() for p in layer.router.parameters())
    if cached and any(isinstance(m, MixtureOfExperts) for m in net.modules()):
        total -= sum(p.numel() for p in net.level_embed.parameters())
    return total


def count_flops(fn: Callable[[], Any]) -> dict[str, int]:
    """Run ``fn()`` under the FLOP counter; total FLOPs per module path (and ``Global``)."""
    with FlopCounterMode(display=False, depth=None, custom_mapping=_CPU_ATTENTION) as counter:
        fn()
    return {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


def denoiser_flops(net: nn.Module, counts: dict[str, int], prefix: str | None = None) -> dict[str, int]:
    """Split ``counts`` (from :func:`count_flops`) of the calls to ``net`` into :data:`COMPONENTS`.
    ``prefix``: ``net``'s module path in the counted call (default its class name, when ``net``
    itself was called; ``Policy.denoiser`` when a policy was)."""
    prefix = prefix or type(net).__name__
    get = lambda path: counts.get(f"{prefix}.{path}" if path else prefix, 0)  # noqa: E731
    out = dict.fromkeys(COMPONENTS, 0)
    for i, block in enumerate(getattr(net, "blocks", [])):
        for branch in block.branches():
            out[branch] += get(f"blocks.{i}.{branch}")
        if isinstance(block.ffn, MixtureOfExperts):
            router = get(f"blocks.{i}.ffn.router")
            out["router"] += router
            out["ffn"] -= router
    out["total"] = get("")
    out["other"] = out["total"] - sum(out[k] for k in COMPONENTS[:4])
    return out
