"""Resizing camera frames while importing: ``image_size=[H, W]`` on ``cadence import``.

Recorded frames are often far larger than a policy uses (480x640 from a USB camera; policies
train on 84x84 to 240x320), and a store of full frames is tens of GB. Importers resize each
episode's frames as they decode them: area averaging when shrinking (no aliasing), bilinear when
enlarging, uint8 RGB in and out.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cadence.untrusted import LIMITS, check_int

from .episode_store import StoreError


def image_size(value: Any, where: str = "image_size") -> tuple[int, int] | None:
    """``[H, W]`` from the command line as a checked pair of positive ints (None: keep the size)."""
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise StoreError(f"{where}: must be [height, width], got {value!r}")
    h, w = (check_int(where, name, v, 1, 8192) for name, v in zip(("height", "width"), value))
    if h * w * 3 > LIMITS["obs_elements"]:
        raise StoreError(f"{where}: {h}x{w} RGB frames hold more than {LIMITS['obs_elements']:,} values")
    return h, w


def resize_frames(frames: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``(T, H, W, C)`` uint8 frames resized to ``size = (h, w)`` (unchanged when None or equal)."""
    from PIL import Image

    if size is None or tuple(frames.shape[1:3]) == tuple(size):
        return frames
    h, w = size
    shrink = h <= frames.shape[1] and w <= frames.shape[2]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    out = np.empty((len(frames), h, w, *frames.shape[3:]), dtype=np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
        resized = np.asarray(image.resize((w, h), method))
        out[i] = resized.reshape(out.shape[1:])
    return out
