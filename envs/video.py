"""Write rollout frames to a .gif (imageio + Pillow) or an .mp4 (imageio's ffmpeg plugin)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["save_video"]


def _check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(frames) == 0:
        raise ValueError("no frames to write")
    out = []
    for frame in frames:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] not in (3, 4):
            raise ValueError(f"frames must be (H, W, 3) images, got shape {frame.shape}")
        if frame.dtype != np.uint8:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(frame[..., :3]))
    if any(f.shape != out[0].shape for f in out):
        raise ValueError("all frames must have the same shape")
    return out


VIDEO_FORMATS = ("gif", "mp4")


def check_video_format(suffix: str) -> None:
    """Fail before a rollout, not after it, if frames could not be written as ``suffix``."""
    suffix = suffix.lower() if suffix.startswith(".") else "." + suffix.lower()
    if suffix[1:] not in VIDEO_FORMATS:
        raise ValueError(f"unsupported video format {suffix!r}: use one of {VIDEO_FORMATS}")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401  (the backend of imageio's ffmpeg plugin)
        except ImportError as exc:
            raise RuntimeError("writing .mp4 needs imageio's ffmpeg plugin, which is not installed: "
                               "use .gif instead, or `pip install imageio-ffmpeg`") from exc


def save_video(frames: Sequence[np.ndarray], path: str | Path, fps: float = 10) -> Path:
    """Write ``frames`` ((H, W, 3) uint8 each) to ``path`` at ``fps``; returns the path.

    The format follows the suffix: ``.gif`` (Pillow; note that a GIF merges identical
    consecutive frames into one longer frame) or ``.mp4`` (needs ``imageio-ffmpeg``).
    Parent directories are created.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    suffix = path.suffix.lower()
    check_video_format(suffix)
    frames = _check_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)

    if suffix == ".gif":
        import imageio.v3 as iio

        # Pillow plugin: duration per frame in milliseconds, loop=0 repeats forever.
        iio.imwrite(path, np.stack(frames), extension=".gif", plugin="pillow",
                    duration=1000.0 / fps, loop=0)
        return path

    import imageio.v2 as imageio

    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path
