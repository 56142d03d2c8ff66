"""Frames out of mp4 files, for the dataset importers.

:func:`read_video_frames` decodes a video with PyAV and returns, for each requested timestamp
(seconds, on the video's own clock: ``pts * time_base``), the frame nearest to it, refusing a
timestamp with no frame within the tolerance. It seeks to the keyframe before the first
timestamp and decodes only up to the last one, so a slice of a long video (LeRobot v3.0 puts
many episodes in one file) costs about what the slice does. It returns uint8 RGB
``(H, W, 3)`` frames and raises :class:`StoreError` naming the file and what was being read. The
file is opened as MP4 whatever its bytes (a playlist or another container could make FFmpeg read
other files), and a video whose frames hold more than ``LIMITS["obs_elements"]`` values is
refused before a frame is decoded.

``read_video_frames(..., size=(h, w))`` has swscale scale each frame as it converts it to RGB
(area averaging when shrinking, bilinear otherwise, chroma at full resolution), so full-size RGB
frames are never made. On 480x640 -> 96x128 h264 frames that conversion took 0.2 ms a frame
against 1.3 ms for full-size RGB then :func:`~cadence.datasets.image_resize.resize_frames`
(decoding itself: about 5 ms); the two results differed by 1.3-1.5 grey levels on average there,
about 2 on small sharp textures (swscale resolves the chroma subsampling in another order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cadence.untrusted import LIMITS

from .episode_budget import EpisodeBudget
from .episode_store import StoreError

MAX_SECONDS = 10 ** 7        # about 116 days: later timestamps overflow FFmpeg's seek in microseconds


def read_video_frames(path: str | Path, timestamps, tolerance_s: float, where: str = "",
                      size: tuple[int, int] | None = None, budget: EpisodeBudget | None = None) -> np.ndarray:
    """``(len(timestamps), H, W, 3)`` uint8: the frame nearest each timestamp (seconds).

    ``where`` says what the frames are for (e.g. ``"episode 3, key observation.images.top"``);
    errors name it together with ``path``. ``size=(h, w)`` gives ``(len(timestamps), h, w, 3)``
    (checked by :func:`~cadence.datasets.image_resize.image_size` beforehand). The result's bytes
    are taken from ``budget`` before a frame is decoded.
    """
    import av

    path = Path(path)
    timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    context = f" ({where})" if where else ""
    if not path.is_file():
        raise StoreError(f"{path}: missing video file{context}")
    if len(timestamps) == 0:
        raise StoreError(f"{path}: no timestamps to read{context}")
    lo, hi = float(timestamps.min()) - tolerance_s, float(timestamps.max()) + tolerance_s
    if not (np.isfinite(timestamps).all() and 0 <= hi < MAX_SECONDS):
        raise StoreError(f"{path}: timestamps from {lo:.4g} to {hi:.4g} s, outside a video's 0 .. {MAX_SECONDS:,} s"
                         f"{context}")
    try:
        with av.open(str(path), format="mp4") as container:
            if not container.streams.video or container.streams.video[0].codec_context is None:
                raise StoreError(f"{path}: holds no video stream FFmpeg decodes{context}")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height * 3 > LIMITS["obs_elements"]:
                raise StoreError(f"{path}: frames of {width}x{height} pixels, more than "
                                 f"{LIMITS['obs_elements']:,} values each{context}")
            scale = _converter(width, height, size)
            shape = (len(timestamps), *(size or (height, width)), 3)
            if budget is not None:
                budget.take(math.prod(shape), f"{path}{context}")

            def convert(frame) -> np.ndarray:
                if (frame.width, frame.height) != (width, height):
                    raise StoreError(f"{path}: a frame of {frame.width}x{frame.height} pixels in a stream of "
                                     f"{width}x{height}{context}")
                return scale(frame)

            frames = np.empty(shape, np.uint8)
            found = _decode_nearest(container, stream, timestamps, lo, hi, seek=lo > 0, convert=convert, out=frames)
            if lo > 0 and (found.first is None or found.first > lo + 2 * tolerance_s):
                # the seek overshot (an odd index); decode from the start instead
                found = _decode_nearest(container, stream, timestamps, lo, hi, seek=False, convert=convert,
                                        out=frames)
    except MemoryError:
        raise StoreError(f"{path}: its frames do not fit in memory{context}") from None
    except (av.FFmpegError, OSError) as exc:
        raise StoreError(f"{path}: not a readable video{context}: {exc}") from None
    if found.first is None:
        raise StoreError(f"{path}: no frames between {max(lo, 0):.4f} s and {hi:.4f} s{context} "
                         f"(the video is shorter, or truncated)")
    bad = np.flatnonzero(found.error > tolerance_s + 1e-9)
    if len(bad):
        t = timestamps[bad[0]]
        raise StoreError(f"{path}: no frame within {tolerance_s * 1e3:.1f} ms of timestamp {t:.4f} s{context} "
                         f"({len(bad)} of {len(timestamps)} timestamps unmatched; frames decoded here span "
                         f"{found.first:.4f}-{found.last:.4f} s)")
    return frames


def _converter(width: int, height: int, size: tuple[int, int] | None):
    """A frame -> uint8 RGB array function, scaling to ``size`` (h, w) when it differs."""
    if size is None or tuple(size) == (height, width):
        return lambda frame: frame.to_ndarray(format="rgb24")
    from av.video.reformatter import Interpolation

    h, w = size
    method = Interpolation.AREA if h <= height and w <= width else Interpolation.BILINEAR
    # full chroma resolution in and out: without these, swscale's quicker chroma path drifts
    # 3-6 grey levels from resizing the full-size RGB frame
    method |= Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
    return lambda frame: frame.to_ndarray(format="rgb24", width=w, height=h, interpolation=method)


@dataclass
class _Nearest:
    """For each timestamp, the distance of the decoded frame nearest it so far (the earlier on a tie);
    the first and last frame times decoded within the window."""
    error: np.ndarray
    first: float | None = None
    last: float | None = None


def _decode_nearest(container, stream, timestamps: np.ndarray, lo: float, hi: float, seek: bool,
                    convert, out: np.ndarray) -> _Nearest:
    """Decodes the frames between ``lo`` and ``hi`` s, converting only those nearest a timestamp into
    its row of ``out``: memory for one frame per timestamp, whatever the video's frame rate."""
    container.seek(int(lo / stream.time_base) if seek else 0, stream=stream, backward=True, any_frame=False)
    found = _Nearest(np.full(len(timestamps), np.inf))
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.pts * stream.time_base)
        if t > hi:
            break
        if t < lo:
            continue
        found.first = t if found.first is None else found.first
        found.last = t
        distance = np.abs(timestamps - t)
        closer = np.flatnonzero(distance < found.error)
        if len(closer):
            image = convert(frame)
            out[closer] = image
            found.error[closer] = distance[closer]
    return found
