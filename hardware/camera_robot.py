"""Cameras attached to any robot: their newest frames join each observation.

:class:`WithCameras` wraps a :class:`~cadence.hardware.robot.Robot` and a list of
:class:`~cadence.hardware.robot.Camera` s (each on its own capture thread, e.g.
:class:`~cadence.hardware.opencv_camera.OpenCVCamera`). An observation is the robot's, plus each
camera's newest frame under the camera's ``key`` (default ``observation.images.<name>``), with
each frame's capture time in ``info["t_capture"][name]``; ``t_capture`` and ``seq`` stay the
robot's. A frame older than its camera's max age withholds the whole observation
(``latest_observation`` returns ``None``, which the control loop treats like no observation
and holds): a policy must not act on a picture of the past.

:func:`cameras_from_config` builds the cameras from the ``robot.cameras`` config group
(:func:`~cadence.hardware.robot_factory.make_robot` calls both).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from cadence.hardware.robot import Camera, Feature, Observation, Robot, RobotError, RobotSpec

DEFAULT_MAX_AGE_S = 0.15        # a camera whose rate is unknown
MAX_AGE_PERIODS = 3             # otherwise: this many frame periods
RESET_FRAME_TIMEOUT_S = 2.0     # reset() waits this long for a frame captured after the robot's reset
CAMERA_FIELDS = ("source", "shape", "fps", "max_age_ms", "key", "loop")
_POLL_S = 0.002


def camera_key(camera: Camera) -> str:
    """The observation key of ``camera``'s frames: its ``key``, else ``observation.images.<name>``."""
    return getattr(camera, "key", None) or f"observation.images.{camera.name}"


def default_max_age_s(fps: Optional[float]) -> float:
    """Three frame periods at ``fps``, or :data:`DEFAULT_MAX_AGE_S` when the rate is unknown."""
    return MAX_AGE_PERIODS / fps if fps else DEFAULT_MAX_AGE_S


class WithCameras:
    """``robot`` with ``cameras``' frames in its observations (see the module doc).

    ``max_ages_s``: per camera name, the oldest frame an observation may carry (default: three
    periods of the camera's ``fps``, or 0.15 s). Attributes it does not define itself (``estop``,
    ``clear_estop``, counters, ``report``) are the wrapped robot's. ``stale_frames`` counts the
    observations withheld for an old frame, ``stale_by_camera`` per camera.
    """

    def __init__(self, robot: Robot, cameras: Sequence[Camera], max_ages_s: Optional[Mapping[str, float]] = None,
                 reset_timeout_s: float = RESET_FRAME_TIMEOUT_S):
        self.robot = robot
        self.cameras = list(cameras)
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise RobotError(f"cameras: names must be unique, got {names}")
        keys = [camera_key(c) for c in self.cameras]
        if len(set(keys)) != len(keys):
            raise RobotError(f"cameras: observation keys must be unique, got {keys}")
        unknown = sorted(set(max_ages_s or {}) - set(names))
        if unknown:
            raise RobotError(f"cameras: max ages given for unknown cameras {unknown}; the cameras are {names}")
        self._max_ages_s = dict(max_ages_s or {})
        self.reset_timeout_s = float(reset_timeout_s)
        self._spec_of: Optional[RobotSpec] = None      # the robot spec self._spec was built from
        self._spec: Optional[RobotSpec] = None
        self._lock = threading.Lock()
        self.stale_frames = 0
        self.stale_by_camera = {n: 0 for n in names}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("robot", "cameras"):
            raise AttributeError(name)
        return getattr(self.robot, name)

    # --- spec --------------------------------------------------------------------------
    @property
    def spec(self) -> Optional[RobotSpec]:
        """The robot's spec with one (H, W, 3) uint8 feature per camera; ``None`` while the
        robot's is (a remote robot before ``connect``)."""
        base = self.robot.spec
        if base is None:
            return None
        if base is not self._spec_of:
            observation = dict(base.observation)
            for camera in self.cameras:
                key = camera_key(camera)
                if key in observation:
                    raise RobotError(f"camera {camera.name}: observation key {key!r} is already the robot's; "
                                     "give the camera another key")
                observation[key] = Feature(tuple(int(s) for s in camera.shape), "uint8")
            self._spec = RobotSpec(base.name, observation, base.action, base.rate_hz)
            self._spec_of = base
        return self._spec

    def max_age_s(self, name: str) -> float:
        """The oldest frame camera ``name`` may contribute, in seconds."""
        if name in self._max_ages_s:
            return self._max_ages_s[name]
        camera = next(c for c in self.cameras if c.name == name)
        return default_max_age_s(getattr(camera, "fps", None))

    # --- Robot -------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect the robot, then each camera (which returns once its first frame is in). When a
        camera fails, what was connected is disconnected again and the error raised."""
        self.robot.connect()
        try:
            for camera in self.cameras:
                camera.connect()
            self.spec  # noqa: B018  (a key clash is an error at connect, not at the first tick)
        except BaseException:
            try:
                self.disconnect()
            except Exception:  # noqa: BLE001, S110  (the first error is the one to report)
                pass
            raise

    def reset(self, seed: int | None = None) -> Observation:
        """Reset the robot, then wait (at most ``reset_timeout_s``) for a frame from each camera
        captured after the reset returned."""
        obs = self.robot.reset(seed)
        t_reset = time.monotonic()
        deadline = t_reset + self.reset_timeout_s
        frames: dict[str, tuple[np.ndarray, float]] = {}
        while True:
            for camera in self.cameras:
                if camera.name not in frames:
                    got = camera.read_latest(self.max_age_s(camera.name))
                    if got is not None and got[1] >= t_reset:
                        frames[camera.name] = got
            if len(frames) == len(self.cameras):
                return self._merge(obs, frames)
            if time.monotonic() >= deadline:
                missing = [c.name for c in self.cameras if c.name not in frames]
                raise RobotError(f"cameras {missing}: no frame captured within {self.reset_timeout_s:g} s of reset")
            time.sleep(_POLL_S)

    def latest_observation(self) -> Optional[Observation]:
        """The robot's newest observation with each camera's newest frame, or ``None`` when the
        robot has none or a camera's newest frame is older than its max age."""
        obs = self.robot.latest_observation()
        if obs is None:
            return None
        frames = {}
        for camera in self.cameras:
            got = camera.read_latest(self.max_age_s(camera.name))
            if got is None:
                with self._lock:
                    self.stale_frames += 1
                    self.stale_by_camera[camera.name] += 1
                return None
            frames[camera.name] = got
        return self._merge(obs, frames)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        return self.robot.send_action(action)

    def hold(self) -> None:
        self.robot.hold()

    def disconnect(self) -> None:
        """Disconnect the robot, then the cameras (also when the robot's disconnect raises)."""
        try:
            self.robot.disconnect()
        finally:
            self._disconnect_cameras()

    # --- internals ---------------------------------------------------------------------
    def _merge(self, obs: Observation, frames: Mapping[str, tuple[np.ndarray, float]]) -> Observation:
        values = dict(obs.values)
        info = dict(obs.info)
        robot_times = info.get("t_capture")
        t_capture = dict(robot_times) if isinstance(robot_times, Mapping) else {}
        for camera in self.cameras:
            frame, t = frames[camera.name]
            values[camera_key(camera)] = frame
            t_capture[camera.name] = t
        info["t_capture"] = t_capture
        return Observation(values, obs.t_capture, obs.seq, info)

    def _disconnect_cameras(self) -> None:
        errors = []
        for camera in self.cameras:
            try:
                camera.disconnect()
            except Exception as e:  # noqa: BLE001  (every camera gets its disconnect)
                errors.append(e)
        if errors:
            raise errors[0]


# --- config --------------------------------------------------------------------------------
def cameras_from_config(cfg: Any) -> tuple[list[Camera], dict[str, float]]:
    """``(cameras, {name: max_age_s})`` from ``robot.cameras``: a mapping (DictConfig or dict)
    name -> ``{source, shape: [H, W], fps, max_age_ms, key, loop}`` (only ``source`` and
    ``shape`` required). A bad entry is a one-line :class:`RobotError` naming
    ``robot.cameras.<name>.<field>``."""
    from cadence.hardware.opencv_camera import OpenCVCamera

    cfg = _plain(cfg)
    if cfg is None:
        return [], {}
    if not isinstance(cfg, Mapping):
        raise RobotError(f"robot.cameras: expected a mapping name -> {{source, shape, ...}}, got {cfg!r}")
    cameras: list[Camera] = []
    max_ages: dict[str, float] = {}
    for name, entry in cfg.items():
        where = f"robot.cameras.{name}"
        if not isinstance(name, str) or not name:
            raise RobotError(f"{where}: a camera name must be a non-empty string")
        if not isinstance(entry, Mapping):
            raise RobotError(f"{where}: expected {{source, shape: [H, W], ...}}, got {entry!r}")
        for field in entry:
            if field not in CAMERA_FIELDS:
                raise RobotError(f"{where}.{field}: unknown field; a camera takes {', '.join(CAMERA_FIELDS)}")
        source = entry.get("source")
        if source is None or isinstance(source, bool) or not isinstance(source, (int, str)) or source == "":
            raise RobotError(f"{where}.source: expected a device index, a device path, a video file or a URL, "
                             f"got {source!r}")
        shape = entry.get("shape")
        if (not isinstance(shape, (list, tuple)) or len(shape) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise RobotError(f"{where}.shape: expected [H, W] with positive integers, got {shape!r}")
        fps = _positive(entry.get("fps"), f"{where}.fps")
        max_age_ms = _positive(entry.get("max_age_ms"), f"{where}.max_age_ms")
        key = entry.get("key")
        if key is not None and (not isinstance(key, str) or not key):
            raise RobotError(f"{where}.key: expected an observation key (a non-empty string), got {key!r}")
        loop = entry.get("loop", False)
        if not isinstance(loop, bool):
            raise RobotError(f"{where}.loop: expected true or false, got {loop!r}")
        cameras.append(OpenCVCamera(source, (shape[0], shape[1]), fps=fps, name=name, loop=loop, key=key))
        max_ages[name] = max_age_ms / 1e3 if max_age_ms is not None else default_max_age_s(fps)
    return cameras, max_ages


def _plain(cfg: Any) -> Any:
    """A DictConfig / ListConfig as plain containers (resolved); anything else as is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover  (omegaconf comes with hydra)
        return cfg
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _positive(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RobotError(f"{where}: expected a positive number, got {value!r}")
    return float(value)
