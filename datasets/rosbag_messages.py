"""ROS 2 messages as per-step arrays, for :mod:`.rosbag_import`.

One :class:`TopicDecoder` per store key turns the deserialised messages of its topic into
arrays, one per store key it feeds (``key`` and, for joint states, ``key.velocity`` /
``key.effort``), and keeps what must stay the same across every message of every episode
(joint names, sizes, image shapes, which optional fields are filled):

====================================  ==========================================================
message type                          store keys (per-step shape, dtype)
====================================  ==========================================================
``sensor_msgs/msg/JointState``        ``key``: ``position`` (N,) float64; ``key.velocity``,
                                      ``key.effort`` (N,) when filled (never or always); the
                                      joint names go to the store's ``source``
``geometry_msgs/msg/PoseStamped``,    ``key``: ``[x, y, z, qx, qy, qz, qw]`` (7,) float64
``geometry_msgs/msg/Pose``
``geometry_msgs/msg/TwistStamped``,   ``key``: ``[vx, vy, vz, wx, wy, wz]`` (6,) float64
``geometry_msgs/msg/Twist``
``std_msgs/msg/Float64MultiArray``,   ``key``: ``data`` (N,) float64 / float32 (the layout is
``std_msgs/msg/Float32MultiArray``    not applied: data flat, as stored)
``std_msgs/msg/Float64``,             ``key``: ``[data]`` (1,) float64 / float32
``std_msgs/msg/Float32``
``sensor_msgs/msg/Image``             ``key``: (H, W, 3) uint8 RGB, from ``rgb8``, ``bgr8``,
                                      ``mono8`` / ``8UC1``, ``rgba8``, ``bgra8`` (alpha dropped)
``sensor_msgs/msg/CompressedImage``   ``key``: (H, W, 3) uint8 RGB, JPEG or PNG (8-bit grey,
                                      palette, RGB, RGBA) decoded with Pillow
====================================  ==========================================================

Images are resized to ``image_size`` (:func:`~.image_resize.resize_frames`) when given; then
every frame of a key must have one size. A message is data from elsewhere: sizes within
``LIMITS`` (per-step elements), floats finite, an image's ``step`` and data length matching its
``height`` / ``width`` / ``encoding``, a compressed image's header size checked before it is
decoded. Each refusal is a :class:`StoreError` naming the bag, the topic and the message time.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from cadence.untrusted import LIMITS

from .episode_store import StoreError
from .image_decode import check_pixels, decode_image
from .image_resize import resize_frames

IMAGE_ENCODINGS = {"rgb8": (3, None), "bgr8": (3, [2, 1, 0]), "mono8": (1, None), "8UC1": (1, None),
                   "rgba8": (4, [0, 1, 2]), "bgra8": (4, [2, 1, 0])}   # channels, RGB order of the first three


def _floats(values, where: str, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "fiu" or array.ndim != 1:
        raise StoreError(f"{where}: '{what}' is not a list of numbers")
    if array.size > LIMITS["obs_elements"]:
        raise StoreError(f"{where}: '{what}' holds {array.size:,} values, more than {LIMITS['obs_elements']:,}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise StoreError(f"{where}: '{what}' holds NaN or infinite values")
    return array.astype(array.dtype if array.dtype.kind == "f" else np.float64, copy=True)


def _vector(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def _pose(msg) -> np.ndarray:
    pose = getattr(msg, "pose", msg)
    p, q = pose.position, pose.orientation
    return _vector(p.x, p.y, p.z, q.x, q.y, q.z, q.w)


def _twist(msg) -> np.ndarray:
    twist = getattr(msg, "twist", msg)
    v, w = twist.linear, twist.angular
    return _vector(v.x, v.y, v.z, w.x, w.y, w.z)


VECTORS: dict[str, tuple[str, Callable[[Any], np.ndarray]]] = {
    "geometry_msgs/msg/PoseStamped": ("pose", _pose),
    "geometry_msgs/msg/Pose": ("pose", _pose),
    "geometry_msgs/msg/TwistStamped": ("twist", _twist),
    "geometry_msgs/msg/Twist": ("twist", _twist),
    "std_msgs/msg/Float64MultiArray": ("data", lambda m: m.data),
    "std_msgs/msg/Float32MultiArray": ("data", lambda m: m.data),
    "std_msgs/msg/Float64": ("data", lambda m: np.array([m.data], dtype=np.float64)),
    "std_msgs/msg/Float32": ("data", lambda m: np.array([m.data], dtype=np.float32)),
}
JOINT_STATE = "sensor_msgs/msg/JointState"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
SUPPORTED = (JOINT_STATE, *VECTORS, IMAGE, COMPRESSED_IMAGE)


def supported_or_refuse(msgtype: str, where: str, topic: str) -> None:
    if msgtype not in SUPPORTED:
        raise StoreError(f"{where}: topic {topic} has message type {msgtype}, which cadence does not import "
                         f"(supported: {', '.join(SUPPORTED)})")


class TopicDecoder:
    """Messages of one topic (type ``msgtype``) -> ``{store key: per-step array}``."""

    def __init__(self, key: str, topic: str, msgtype: str, image_size: tuple[int, int] | None):
        self.key, self.topic, self.msgtype, self.image_size = key, topic, msgtype, image_size
        self.joint_names: list[str] | None = None
        self.filled: dict[str, bool] | None = None     # JointState: velocity / effort filled
        self.shapes: dict[str, tuple] = {}               # store key -> per-step shape, fixed by the first message

    @property
    def is_image(self) -> bool:
        return self.msgtype in (IMAGE, COMPRESSED_IMAGE)

    def decode(self, msg, where: str) -> dict[str, np.ndarray]:
        """``where`` names the bag, the topic and the message (time)."""
        if self.msgtype == JOINT_STATE:
            out = self._joint_state(msg, where)
        elif self.msgtype == IMAGE:
            out = {self.key: self._resized(_raw_image(msg, where))}
        elif self.msgtype == COMPRESSED_IMAGE:
            out = {self.key: self._resized(_compressed_image(msg, where))}
        else:
            field, get = VECTORS[self.msgtype]
            out = {self.key: _floats(get(msg), where, field)}
        for key, value in out.items():
            shape = self.shapes.setdefault(key, value.shape)
            if value.shape != shape:
                hint = " (image_size=[H,W] resizes every frame to one size)" if self.is_image else ""
                raise StoreError(f"{where}: per-step shape {value.shape} for key '{key}', but earlier messages "
                                 f"gave {shape}{hint}")
            if key == self.key and not self.is_image and value.size == 0:
                raise StoreError(f"{where}: an empty '{VECTORS.get(self.msgtype, ('position',))[0]}'")
        return out

    def _joint_state(self, msg, where: str) -> dict[str, np.ndarray]:
        names = list(msg.name)
        position = _floats(msg.position, where, "position")
        if names and len(names) != len(position):
            raise StoreError(f"{where}: {len(names)} joint names but {len(position)} positions")
        if self.joint_names is None:
            self.joint_names = names
        elif names != self.joint_names:
            raise StoreError(f"{where}: joint names {names[:8]} differ from earlier messages' "
                             f"{self.joint_names[:8]} (a joint order that changes cannot be one array)"[:400])
        out = {self.key: position}
        filled = {}
        for field in ("velocity", "effort"):
            values = _floats(getattr(msg, field), where, field)
            filled[field] = values.size > 0
            if values.size and values.size != position.size:
                raise StoreError(f"{where}: {values.size} {field} values for {position.size} positions")
            if values.size:
                out[f"{self.key}.{field}"] = values
        if self.filled is None:
            self.filled = filled
        elif filled != self.filled:
            changed = next(f for f in filled if filled[f] != self.filled[f])
            raise StoreError(f"{where}: '{changed}' is {'filled' if filled[changed] else 'empty'} here but "
                             f"{'filled' if self.filled[changed] else 'empty'} in earlier messages")
        return out

    def _resized(self, frame: np.ndarray) -> np.ndarray:
        return resize_frames(frame[None], self.image_size)[0] if self.image_size else frame


def _raw_image(msg, where: str) -> np.ndarray:
    encoding, height, width, step = msg.encoding, int(msg.height), int(msg.width), int(msg.step)
    if encoding not in IMAGE_ENCODINGS:
        raise StoreError(f"{where}: image encoding {encoding!r}"[:200] +
                         f" is not one cadence imports ({', '.join(IMAGE_ENCODINGS)})")
    channels, order = IMAGE_ENCODINGS[encoding]
    check_pixels(height, width, where)
    data = np.asarray(msg.data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise StoreError(f"{where}: image data is not bytes")
    if step < width * channels or data.size != step * height:
        raise StoreError(f"{where}: a {width}x{height} {encoding} image needs step >= {width * channels} and "
                         f"step x height bytes; has step {step} and {data.size:,} bytes")
    pixels = data.reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, order] if order else pixels)


def _compressed_image(msg, where: str) -> np.ndarray:
    data = np.asarray(msg.data)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise StoreError(f"{where}: image data is not bytes")
    return decode_image(data.tobytes(), where, f"format {msg.format!r}")
