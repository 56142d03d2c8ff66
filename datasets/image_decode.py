"""One encoded image from a file from elsewhere (a LeRobot image column, a ROS 2
``CompressedImage``) as uint8 RGB ``(H, W, 3)``.

Only bytes are taken (a string would be a path or a URL to an image reader), and only Pillow
decodes them, as PNG, JPEG or WebP: the size is read from the header and checked against
``LIMITS["obs_elements"]`` before a pixel is decoded, and bytes whose header Pillow cannot read
are refused, never handed to another reader (imageio would fall back to FFmpeg and decode a
whole video). Modes other than 8-bit colour or grey (16-bit, float) are refused.
"""
from __future__ import annotations

import io

import numpy as np

from cadence.untrusted import LIMITS

from .episode_store import StoreError

FORMATS = ("PNG", "JPEG", "WEBP")
MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr"}   # 8-bit colour / grey: converted to RGB


def check_pixels(height: int, width: int, where: str) -> None:
    """An RGB frame of ``height x width`` within ``LIMITS["obs_elements"]`` values."""
    if height < 1 or width < 1 or height * width * 3 > LIMITS["obs_elements"]:
        raise StoreError(f"{where}: an image of {width}x{height} pixels (at most {LIMITS['obs_elements']:,} "
                         f"values per RGB frame)")


def decode_image(data, where: str, note: str = "") -> np.ndarray:
    """``data`` (bytes) decoded to uint8 RGB ``(H, W, 3)``; errors name ``where`` (and ``note``,
    e.g. the format a message declares)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StoreError(f"{where}: image data must be bytes, got {type(data).__name__}")
    note = f" ({note})" if note else ""
    width = height = 0
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size            # from the header: checked before anything is decoded
            check_pixels(height, width, where)
            if image.mode not in MODES:
                raise StoreError(f"{where}: a {image.format} image of mode {image.mode}{note}; cadence imports "
                                 "8-bit colour or grey images"[:400])
            rgb = np.asarray(image.convert("RGB"))
    except StoreError:
        raise
    except MemoryError:
        raise StoreError(f"{where}: a {width}x{height} image does not fit in memory") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise StoreError(f"{where}: not a decodable {' / '.join(FORMATS)} image{note}: "
                         f"{type(exc).__name__}: {exc}"[:400]) from None
    if rgb.shape != (height, width, 3) or rgb.dtype != np.uint8:
        raise StoreError(f"{where}: decoded to {rgb.dtype} {rgb.shape}, not {height}x{width} RGB")
    return rgb
