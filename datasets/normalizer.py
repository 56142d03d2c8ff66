"""Per-key affine normalizers: min-max to [-1, 1] ("limits") or mean/std ("gaussian").

``normalize(x) = x * scale + offset``. The parameters are buffers, so they move with the
policy to a device, and they are saved in the checkpoint's ``normalizer.safetensors``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

MODES = ("limits", "gaussian")
RANGE_EPS = 1e-4   # a dimension that barely varies is centred, not blown up


def affine_from_stats(stats: Mapping[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "limits":
        lo, hi = np.asarray(stats["min"], float), np.asarray(stats["max"], float)
        span = hi - lo
        flat = span < RANGE_EPS
        scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, span))
        offset = np.where(flat, -(lo + hi) / 2.0, -1.0 - lo * scale)
    elif mode == "gaussian":
        mean, std = np.asarray(stats["mean"], float), np.asarray(stats["std"], float)
        flat = std < RANGE_EPS
        scale = np.where(flat, 1.0, 1.0 / np.where(flat, 1.0, std))
        offset = -mean * scale
    else:
        raise ValueError(f"normalizer mode must be one of {MODES}, got {mode!r}")
    return scale.astype(np.float32), offset.astype(np.float32)


def module_name(key: str) -> str:
    """A data key as a torch module / buffer name, which may not contain '.': LeRobot keys
    such as ``observation.state`` become ``observation%2Estate`` ('%' escaped first, so the
    mapping is one to one); keys without '.' or '%' are unchanged."""
    return key.replace("%", "%25").replace(".", "%2E")


class Normalizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.modes: dict[str, str] = {}

    @classmethod
    def from_stats(cls, stats: Mapping[str, Mapping[str, np.ndarray]], modes: Mapping[str, str]) -> "Normalizer":
        norm = cls()
        for key, mode in modes.items():
            scale, offset = affine_from_stats(stats[key], mode)
            norm.add(key, mode, torch.from_numpy(scale), torch.from_numpy(offset))
        return norm

    def in_range(self, key: str) -> bool:
        """Whether the key's scale and offset keep every normalised value within [-5, 5] finite (and
        far from float32's limits) once unnormalised: no scale of zero or nearly, no huge offset."""
        return float32_range(*self.params(key))

    def add(self, key: str, mode: str, scale: torch.Tensor, offset: torch.Tensor) -> None:
        if mode not in MODES:
            raise ValueError(f"normalizer mode for {key!r} must be one of {MODES}, got {mode!r}")
        if not key:
            raise ValueError("normalizer key must be non-empty")
        self.modes[key] = mode
        self.register_buffer(f"{module_name(key)}__scale", scale.float())
        self.register_buffer(f"{module_name(key)}__offset", offset.float())

    def params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.modes:
            raise KeyError(f"normalizer has no key {key!r} (has {sorted(self.modes)})")
        return getattr(self, f"{module_name(key)}__scale"), getattr(self, f"{module_name(key)}__offset")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self.params(key)
        return x * scale + offset

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        scale, offset = self.params(key)
        return (y - offset) / scale

    def __contains__(self, key: str) -> bool:
        return key in self.modes

    # --- persistence (safetensors tensors + a JSON-able mode table) -----------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: buf.detach().cpu().contiguous() for name, buf in self.named_buffers()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], modes: Mapping[str, str]) -> "Normalizer":
        norm = cls()
        for key, mode in modes.items():
            try:
                norm.add(key, mode, tensors[f"{module_name(key)}__scale"], tensors[f"{module_name(key)}__offset"])
            except KeyError as exc:
                raise KeyError(f"normalizer tensors lack {exc.args[0]!r} for key {key!r}") from None
        return norm


MAX_UNNORMALIZED = 1e30     # the largest |action| an unnormalisation may reach from a value within +-5


def float32_range(scale, offset) -> bool:
    """Whether ``(y - offset) / scale`` stays below :data:`MAX_UNNORMALIZED` for |y| <= 5 in float32
    (``scale``, ``offset``: tensors or sequences of the same length)."""
    scale = torch.as_tensor(scale, dtype=torch.float64)
    offset = torch.as_tensor(offset, dtype=torch.float64)
    if not bool(torch.isfinite(scale.float()).all()) or bool((scale.float() == 0).any()):
        return False
    return bool(((5 + offset.float().double().abs()) / scale.float().double().abs() < MAX_UNNORMALIZED).all())
