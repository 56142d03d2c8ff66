"""Inpainting a known part of the chunk during sampling (prefix freezing, as in real-time chunking).

The control loop commits the actions that will run while the next chunk is being computed;
the new chunk must continue from them. At every sampling level the known entries of the
sample are replaced by the known values carried to that level with the same noise the sample
started from, so the unknown entries are denoised around them and the last step returns the
known values exactly (the "replacement" method of diffusion inpainting; no gradients needed,
so it runs in every runtime, exported graphs included).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KnownActions:
    """``values`` (B, Tp, Da) normalised; ``mask`` (Tp,) bool: which chunk indices are known."""

    values: torch.Tensor
    mask: torch.Tensor

    def impose(self, x: torch.Tensor, noise: torch.Tensor, signal: float, noise_scale: float) -> torch.Tensor:
        """``x`` with its known entries set to ``signal * values + noise_scale * noise``."""
        m = self.mask.to(x.device).view(1, -1, 1)
        return torch.where(m, signal * self.values.to(x) + noise_scale * noise, x)
