"""A camera read through OpenCV: a USB / V4L2 device, a video file or a network stream.

:class:`OpenCVCamera` implements the :class:`~cadence.hardware.robot.Camera` seam. A daemon
thread captures on the camera's own clock: ``grab()``, the capture time (``time.monotonic()``
right after the grab, the closest the host gets to the exposure), ``retrieve()``, BGR -> RGB,
resize to the policy's ``(H, W)`` (``INTER_AREA``; skipped when already that size), then
publishes the frame under a lock. ``read_latest`` only takes that lock, so the control loop
never waits for a camera; a frame older than the caller's ``max_age_s`` is withheld.

A video *file* stands in for a camera: it is played at its own rate (its ``CAP_PROP_FPS``, or
``fps`` given), paced against the monotonic clock so that frame ``k`` is captured at about
``start + k / fps``. When decoding falls more than a period behind, frames are skipped (as a
camera drops them) rather than played late. At its end it stops (``finished``), or starts over
with ``loop=True``. Devices and stream URLs deliver frames at their own rate; ``fps`` is then a
request to the device.

OpenCV is made single-threaded (``cv2.setNumThreads(1)``): a resize of one small frame gains
nothing from a thread pool, and the pool would compete with the policy for the CPU.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Optional, Union

import cv2
import numpy as np

from cadence.hardware.robot import RobotError

Source = Union[int, str]

_STOP_POLL_S = 0.05          # longest uninterrupted wait of the capture thread
_DEVICE_RETRY_S = 0.01       # pause after a failed grab on a live source
_JOIN_TIMEOUT_S = 5.0        # disconnect() waits this long for a grab in flight


def parse_source(source: Source) -> tuple[Source, str]:
    """``(source for cv2.VideoCapture, kind)``; kind is ``device`` (an index or ``/dev/...``),
    ``stream`` (a URL) or ``file``."""
    if isinstance(source, bool):
        raise RobotError(f"camera source must be a device index, a device path, a file or a URL, got {source!r}")
    if isinstance(source, (int, np.integer)):
        return int(source), "device"
    text = str(source).strip()
    if text.isascii() and text.isdigit():
        return int(text), "device"
    if text.startswith("/dev/"):
        return text, "device"
    if "://" in text:
        return text, "stream"
    return os.path.expanduser(text), "file"


class OpenCVCamera:
    """A :class:`~cadence.hardware.robot.Camera` on ``cv2.VideoCapture`` (see the module doc).

    ``shape`` is ``(H, W, 3)``; frames are uint8 RGB. ``fps``: for a file its playback rate
    (default: the file's own), for a device the rate requested. ``key``: the observation key
    :class:`~cadence.hardware.camera_robot.WithCameras` files the frames under (``None``: its
    default). A published frame is a fresh array that is never written again: readers share it
    and must not modify it.

    Counters (cumulative since construction): ``frames_captured`` frames published,
    ``frames_dropped`` published frames replaced before any ``read_latest`` returned them,
    ``frames_skipped`` file frames skipped to keep pace, ``read_failures`` failed grabs or
    retrieves of a live source.
    """

    def __init__(self, source: Source, shape: tuple[int, int] = (96, 96), fps: Optional[float] = None,
                 name: str = "camera", loop: bool = False, key: Optional[str] = None,
                 first_frame_timeout_s: float = 5.0):
        try:
            h, w = (int(s) for s in shape)
        except (TypeError, ValueError):
            h = w = 0
        if h <= 0 or w <= 0:
            raise RobotError(f"camera {name}: shape must be [H, W] with H, W > 0, got {shape!r}")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise RobotError(f"camera {name}: fps must be > 0, got {fps}")
        self.source = source
        self._source, self.kind = parse_source(source)
        self.name, self.key, self.loop = name, key, bool(loop)
        self.shape: tuple[int, int, int] = (h, w, 3)
        self.requested_fps = None if fps is None else float(fps)
        self.fps: Optional[float] = self.requested_fps   # the rate in use, once connected
        self.first_frame_timeout_s = float(first_frame_timeout_s)

        self._lock = threading.Lock()
        self._latest: Optional[tuple[np.ndarray, float, int]] = None   # (frame, t_capture, publish count)
        self._last_read_index = -1
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._first = threading.Event()
        self._finished = threading.Event()
        self._error: Optional[str] = None
        self._cap: Optional[cv2.VideoCapture] = None
        self.frames_captured = self.frames_dropped = self.frames_skipped = self.read_failures = 0

    # --- Camera ------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once a file (without ``loop``) has played to its end."""
        return self._finished.is_set()

    @property
    def connected(self) -> bool:
        return self._thread is not None

    def connect(self) -> None:
        """Open the source and start capturing; returns once the first frame is in."""
        if self._thread is not None:
            return
        cv2.setNumThreads(1)
        cap = self._open()
        if self.kind == "file":
            file_fps = cap.get(cv2.CAP_PROP_FPS)
            fps = self.requested_fps or (file_fps if math.isfinite(file_fps) and file_fps > 0 else None)
            if fps is None:
                cap.release()
                raise RobotError(f"camera {self.name}: {self._source!r} does not tell its frame rate; give fps")
            self.fps = float(fps)
        else:
            if self.requested_fps is not None:
                cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)      # the newest frame, not a queue of old ones
            device_fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(device_fps) if math.isfinite(device_fps) and device_fps > 0 else self.requested_fps
        self._stop.clear()
        self._first.clear()
        self._finished.clear()
        self._error = None
        with self._lock:
            self._latest, self._last_read_index = None, self.frames_captured - 1
        self._thread = threading.Thread(target=self._run, args=(cap,), name=f"OpenCVCamera[{self.name}]",
                                         daemon=True)
        self._thread.start()
        if not self._first.wait(self.first_frame_timeout_s):
            self.disconnect()
            raise RobotError(f"camera {self.name}: no frame from {self._source!r} within "
                             f"{self.first_frame_timeout_s:g} s")
        if self._latest is None:
            error = self._error or "no frame"
            self.disconnect()
            raise RobotError(f"camera {self.name} ({self._source!r}): {' '.join(error.split())}")

    def read_latest(self, max_age_s: float) -> Optional[tuple[np.ndarray, float]]:
        """The newest frame (H, W, 3) uint8 RGB and its capture time, or ``None`` when there is
        none or it was captured more than ``max_age_s`` ago."""
        now = time.monotonic()
        with self._lock:
            latest = self._latest
            if latest is None or now - latest[1] > max_age_s:
                return None
            frame, t_capture, index = latest
            if index > self._last_read_index:
                self.frames_dropped += max(0, index - self._last_read_index - 1)
                self._last_read_index = index
        return frame, t_capture

    def disconnect(self) -> None:
        """Stop capturing and release the source; idempotent. The last frame stays readable
        (it ages like any other)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(_JOIN_TIMEOUT_S)   # a grab stuck on a dead stream: the thread releases later

    # --- capture thread ----------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture:
        if self.kind == "file" and not os.path.isfile(self._source):
            raise RobotError(f"camera {self.name}: no such video file {self._source!r}")
        cap = cv2.VideoCapture(self._source)
        if not cap.isOpened():
            cap.release()
            raise RobotError(f"camera {self.name}: cannot open {self.kind} {self._source!r}")
        return cap

    def _run(self, cap: cv2.VideoCapture) -> None:
        self._cap = cap                      # owned by this thread from here on
        try:
            if self.kind == "file":
                self._play_file()
            else:
                self._capture_live()
        except Exception as e:  # noqa: BLE001  (reported by connect, or seen as stale frames)
            self._error = f"capture failed: {e}"
            self._first.set()
        finally:
            self._cap.release()

    def _capture_live(self) -> None:
        """A device or stream: it sets the pace; a failed grab is retried (frames go stale)."""
        cap = self._cap
        while not self._stop.is_set():
            if not cap.grab():
                self.read_failures += 1
                self._stop.wait(_DEVICE_RETRY_S)
                continue
            t_capture = time.monotonic()
            if not self._publish(cap, t_capture):
                self.read_failures += 1

    def _play_file(self) -> None:
        """A file at ``self.fps`` on the monotonic clock: frame ``k`` at ``start + k / fps``."""
        cap = self._cap
        period = 1.0 / self.fps
        start = time.monotonic()
        k = 0            # frames of the schedule so far (continues across loops)
        k_pass = 0       # k when the current pass over the file began
        while not self._stop.is_set():
            due = start + k * period
            while not self._stop.is_set() and (wait := due - time.monotonic()) > 0:
                self._stop.wait(min(wait, _STOP_POLL_S))
            if self._stop.is_set():
                return
            behind = math.floor((time.monotonic() - due) / period)   # whole periods late
            for _ in range(max(0, behind)):                          # drop them, as a camera would
                if not cap.grab():
                    break
                self.frames_skipped += 1
                k += 1
            if not cap.grab():
                if k == k_pass:              # not one frame this pass: nothing to play
                    self._error = "the file has no frames"
                if not self.loop or k == k_pass:
                    self._finished.set()
                    self._first.set()        # connect() must not wait for a frame that never comes
                    return
                cap.release()
                cap = self._cap = self._open()   # reopening is robust where seeking is not (all codecs)
                k_pass = k
                continue
            t_capture = time.monotonic()
            if not self._publish(cap, t_capture):
                self._error = f"cannot decode frame {k}"
                self._finished.set()
                self._first.set()
                return
            k += 1

    def _publish(self, cap: cv2.VideoCapture, t_capture: float) -> bool:
        """Retrieve the grabbed frame, convert it and make it the newest; False if it failed."""
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
            return False
        if bgr.ndim == 2:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB if bgr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        h, w = self.shape[:2]
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        frame = np.ascontiguousarray(rgb, dtype=np.uint8)
        with self._lock:
            self._latest = (frame, t_capture, self.frames_captured)
            self.frames_captured += 1
        self._first.set()
        return True
