"""The robot server's wire format: JSON header + raw array frames, validated; never pickle.

A message is a list of ZeroMQ frames::

    frame 0   UTF-8 JSON object {"v": 1, "kind": "act", "id": 7, "token": "...",   (token: requests)
                                 ...fields...,
                                 "arrays": {"action": {"dtype": "float32", "shape": [2]}}}
    frame 1.. one raw little-endian C-order buffer per array, in the order of "arrays"

Requests: ``hello``, ``reset`` (``seed``), ``observe``, ``act`` (array ``action``, ``seq``,
``expires``), ``hold``, ``bye``. A reply has the request's kind and id with ``"ok": true`` and its
payload, or kind ``error`` with a ``reason``. An observation travels as arrays ``obs.<key>`` plus
a header field ``obs`` = ``{"t_capture", "seq", "info"}`` (``"obs": null`` when there is none).

Decoding is two steps, so that a receiver can authenticate before it touches a payload:
:func:`decode_header` parses only frame 0 (the array frames stay raw buffers), and
:func:`decode_payload` checks the array specs and builds the arrays. :func:`decode` does both.
Each accepts any input and either returns its result or raises :class:`WireError` with a short
reason; sizes are checked before anything is allocated. :func:`check_token` is the token rule
both ends apply (a string of ``MIN_TOKEN_BYTES`` to ``MAX_TOKEN_BYTES`` bytes).
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cadence.hardware.robot import Feature, Observation, RobotError, RobotSpec
from cadence.errors import CadenceError
from cadence.untrusted import finite_float, finite_number

VERSION = 1
REQUEST_KINDS = frozenset({"hello", "reset", "observe", "act", "hold", "bye"})
KINDS = REQUEST_KINDS | {"error"}
DTYPES = frozenset({"float32", "float64", "uint8", "int32", "int64", "bool"})
MAX_HEADER_BYTES = 64 * 1024
MAX_REQUEST_HEADER_BYTES = 4 * 1024      # a request's header: kind, id, token, seq, expires, seed
MIN_TOKEN_BYTES = 16
MAX_TOKEN_BYTES = 1024
MAX_ARRAY_BYTES = 64 * 1024 * 1024       # all arrays of one message together
MAX_NDIM = 8
MAX_ARRAYS = 64
RESERVED = frozenset({"v", "kind", "id", "token", "arrays"})
OBS_PREFIX = "obs."
_INT64 = 2 ** 63


class WireError(CadenceError, ValueError):
    """A message that is not a valid message of this protocol. ``reason`` is short and
    specific; ``msg_id`` is the message's id when it could be read (to address the reply)."""

    def __init__(self, reason: str, msg_id: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.msg_id = msg_id


def check_token(token: object) -> bytes:
    """The shared token as UTF-8 bytes; raises :class:`RobotError` (never showing the token)
    unless it is a string of ``MIN_TOKEN_BYTES`` to ``MAX_TOKEN_BYTES`` bytes."""
    if not isinstance(token, str):
        raise RobotError(f"the robot token must be a string, got {type(token).__name__}")
    raw = token.encode("utf-8", "surrogatepass")
    if not MIN_TOKEN_BYTES <= len(raw) <= MAX_TOKEN_BYTES:
        raise RobotError(f"the robot token has {len(raw)} bytes; it needs {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} "
                         "(make one with: python -c 'import secrets; print(secrets.token_hex(16))')")
    return raw


@dataclass(frozen=True)
class Header:
    """A message whose header frame is parsed and whose array frames are not yet looked at."""
    kind: str
    id: int
    token: str | None
    header: Mapping[str, Any]
    frames: Sequence[memoryview]           # the array frames, raw

    @property
    def payload_bytes(self) -> int:
        return sum(f.nbytes for f in self.frames)


@dataclass(frozen=True)
class Message:
    kind: str
    id: int
    fields: Mapping[str, Any] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    token: str | None = None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode(kind: str, fields: Mapping[str, Any] | None = None,
           arrays: Mapping[str, np.ndarray] | None = None, msg_id: int = 0,
           token: str | None = None) -> list[bytes]:
    """Frames for one message. Raises :class:`WireError` for anything :func:`decode` would
    refuse (unknown kind, reserved field name, dtype off the whitelist, NaN/inf, oversize)."""
    if kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}")
    if type(msg_id) is not int or not -_INT64 <= msg_id < _INT64:
        raise WireError("id must be an int64")
    fields = dict(fields or {})
    clash = RESERVED.intersection(fields)
    if clash:
        raise WireError(f"reserved field names {sorted(clash)}")
    header: dict[str, Any] = {"v": VERSION, "kind": kind, "id": msg_id}
    if token is not None:
        header["token"] = str(token)
    header.update(fields)
    specs: dict[str, dict] = {}
    buffers: list[bytes] = []
    total = 0
    for name, value in (arrays or {}).items():
        a = np.asarray(value)
        dtype = a.dtype.name
        if dtype not in DTYPES:
            raise WireError(f"array {name!r}: dtype {dtype} not allowed")
        if a.ndim > MAX_NDIM:
            raise WireError(f"array {name!r}: more than {MAX_NDIM} dimensions")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise WireError(f"array {name!r}: non-finite values")
        total += a.nbytes
        if total > MAX_ARRAY_BYTES:
            raise WireError("arrays too large")
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        specs[str(name)] = {"dtype": dtype, "shape": list(a.shape)}
        buffers.append(a.tobytes())
    if len(specs) > MAX_ARRAYS:
        raise WireError("too many arrays")
    header["arrays"] = specs
    try:
        head = json.dumps(header, separators=(",", ":"), allow_nan=False,
                          default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise WireError(f"fields not JSON: {e}") from None
    if len(head) > MAX_HEADER_BYTES:
        raise WireError("header too large")
    return [head, *buffers]


def _is_int(value: Any) -> bool:
    return type(value) is int


def _guarded(parse):
    """``parse`` raising :class:`WireError` and nothing else, whatever the input."""
    @functools.wraps(parse)
    def guarded(*args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except WireError:
            raise
        except Exception as e:  # noqa: BLE001  (a guard: nothing else may escape)
            raise WireError(f"malformed message ({type(e).__name__})") from None
    return guarded


@_guarded
def decode_header(frames: Sequence[Any], max_header_bytes: int = MAX_HEADER_BYTES) -> Header:
    """Parse frame 0 (version, kind, id, token); the other frames are kept as raw buffers."""
    if not isinstance(frames, (list, tuple)):
        raise WireError("frames must be a list")
    if not frames:
        raise WireError("empty message")
    if len(frames) > MAX_ARRAYS + 1:               # before a view of each is made
        raise WireError(f"{len(frames):,} frames: more than a header and {MAX_ARRAYS} arrays")
    bufs = []
    for f in frames:
        if isinstance(f, (bytes, bytearray)):
            bufs.append(memoryview(f))
        elif isinstance(f, memoryview):
            bufs.append(f.cast("B") if f.contiguous else memoryview(f.tobytes()))
        elif hasattr(f, "buffer") and isinstance(f.buffer, memoryview):  # zmq.Frame
            bufs.append(f.buffer.cast("B"))
        else:
            raise WireError("frames must be bytes")
    head = bufs[0]
    if head.nbytes > max_header_bytes:
        raise WireError("header too large")
    try:
        text = head.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("header not UTF-8") from None
    try:
        header = json.loads(text, parse_constant=_reject_constant, parse_float=finite_float)
    except (ValueError, RecursionError):
        raise WireError("header not JSON") from None
    if not isinstance(header, dict):
        raise WireError("header not an object")
    version = header.get("v")
    if not _is_int(version) or version != VERSION:
        raise WireError(f"unsupported version {version!r}"[:80])
    msg_id = header.get("id")
    if not _is_int(msg_id) or not -_INT64 <= msg_id < _INT64:
        raise WireError("bad id")
    kind = header.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireError(f"unknown kind {kind!r}"[:80], msg_id)
    token = header.get("token")
    if token is not None and not isinstance(token, str):
        raise WireError("bad token field", msg_id)
    return Header(kind, msg_id, token, header, bufs[1:])


@_guarded
def decode_payload(head: Header) -> Message:
    """Check the array specs against the array frames and build the arrays."""
    header, msg_id = head.header, head.id
    specs = header.get("arrays", {})
    if not isinstance(specs, dict):
        raise WireError("bad arrays field", msg_id)
    if len(specs) > MAX_ARRAYS:
        raise WireError("too many arrays", msg_id)
    checked: list[tuple[str, np.dtype, tuple[int, ...], int]] = []
    total = 0
    for name, spec in specs.items():
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
            raise WireError(f"array {name!r}: bad spec"[:80], msg_id)
        dtype_name = spec["dtype"]
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise WireError(f"array {name!r}: bad dtype {dtype_name!r}"[:80], msg_id)
        shape = spec["shape"]
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(_is_int(s) and s >= 0 for s in shape)):
            raise WireError(f"array {name!r}: bad shape"[:80], msg_id)
        dtype = np.dtype(dtype_name).newbyteorder("<")
        nbytes = math.prod(shape) * dtype.itemsize     # Python ints: no overflow
        total += nbytes
        if total > MAX_ARRAY_BYTES:
            raise WireError("arrays too large", msg_id)
        checked.append((name, dtype, tuple(shape), nbytes))
    if len(head.frames) != len(checked):
        raise WireError(f"frame count mismatch: {len(head.frames)} array frames for "
                        f"{len(checked)} arrays", msg_id)
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype, shape, nbytes), buf in zip(checked, head.frames):
        if buf.nbytes != nbytes:
            raise WireError(f"array {name!r}: wrong byte length {buf.nbytes} != {nbytes}"[:100],
                            msg_id)
        a = np.frombuffer(buf, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
        if dtype.kind == "f" and not np.isfinite(a).all():
            raise WireError(f"array {name!r}: non-finite values"[:80], msg_id)
        if dtype.kind == "b" and a.view(np.uint8).max(initial=0) > 1:
            raise WireError(f"array {name!r}: bool bytes not 0/1"[:80], msg_id)
        arrays[name] = a
    fields = {k: v for k, v in header.items() if k not in RESERVED}
    return Message(head.kind, msg_id, fields, arrays, head.token)


def decode(frames: Sequence[Any]) -> Message:
    """Parse and validate one message; raises :class:`WireError` (and nothing else) if invalid."""
    return decode_payload(decode_header(frames))


def check_against(arrays: Mapping[str, np.ndarray], features: Mapping[str, Feature],
                  what: str = "arrays") -> None:
    """Raise :class:`WireError` unless ``arrays`` has exactly the keys of ``features`` with
    exactly their shapes and dtypes."""
    if set(arrays) != set(features):
        raise WireError(f"{what}: keys {sorted(arrays)} != {sorted(features)}"[:160])
    for name, feature in features.items():
        a = arrays[name]
        if tuple(a.shape) != tuple(feature.shape):
            raise WireError(f"{name}: shape {list(a.shape)} != {list(feature.shape)}"[:160])
        if a.dtype.name != feature.dtype:
            raise WireError(f"{name}: dtype {a.dtype.name} != {feature.dtype}")


MAX_RATE_HZ = 10_000.0


def check_spec(spec: RobotSpec) -> RobotSpec:
    """``spec`` (from a hello reply) if a robot could send and take what it describes: dtypes on
    the whitelist, shapes within ``MAX_NDIM`` / ``MAX_ARRAY_BYTES`` (observation and action each),
    at most ``MAX_ARRAYS`` observation keys, a finite rate in (0, ``MAX_RATE_HZ``], finite action
    bounds of the action's size with low <= high; raises :class:`WireError` naming what is not."""
    if not 0 < spec.rate_hz <= MAX_RATE_HZ:
        raise WireError(f"spec: rate_hz {spec.rate_hz!r} not in (0, {MAX_RATE_HZ:g}]"[:120])
    if len(spec.observation) > MAX_ARRAYS:
        raise WireError(f"spec: {len(spec.observation)} observation keys, more than {MAX_ARRAYS}")
    total = 0
    for name, feature in [*spec.observation.items(), ("action", spec.action)]:
        if feature.dtype not in DTYPES:
            raise WireError(f"spec: {name}: dtype {feature.dtype!r} not allowed"[:120])
        if len(feature.shape) > MAX_NDIM or not all(s >= 1 for s in feature.shape):
            raise WireError(f"spec: {name}: bad shape {list(feature.shape)}"[:120])
        nbytes = math.prod(feature.shape) * np.dtype(feature.dtype).itemsize
        total = nbytes if name == "action" else total + nbytes
        if total > MAX_ARRAY_BYTES:
            raise WireError(f"spec: {name}: more than {MAX_ARRAY_BYTES:,} bytes")
    size = math.prod(spec.action.shape)
    for bound in (spec.action.low, spec.action.high):
        if bound is not None and (len(bound) != size or not all(math.isfinite(v) for v in bound)):
            raise WireError(f"spec: action bounds must be {size} finite numbers")
    if spec.action.low is not None and spec.action.high is not None and \
            any(lo > hi for lo, hi in zip(spec.action.low, spec.action.high)):
        raise WireError("spec: an action bound with low > high")
    return spec


def observation_payload(obs: Observation | None) -> tuple[dict, dict[str, np.ndarray]]:
    """Header fields and arrays that carry ``obs`` (``{"obs": None}`` for no observation)."""
    if obs is None:
        return {"obs": None}, {}
    meta = {"t_capture": float(obs.t_capture), "seq": int(obs.seq), "info": dict(obs.info)}
    return {"obs": meta}, {OBS_PREFIX + k: np.asarray(v) for k, v in obs.values.items()}


def observation_from(message: Message, features: Mapping[str, Feature] | None = None,
                     clock_offset_s: float = 0.0) -> Observation | None:
    """The observation in a reply (``None`` if it carries none), checked against ``features``
    when given; ``t_capture`` is moved to the local clock: ``t_server - clock_offset_s``."""
    meta = message.fields.get("obs")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise WireError("obs: not an object")
    t_capture, seq, info = finite_number(meta.get("t_capture")), meta.get("seq"), meta.get("info", {})
    if t_capture is None or not math.isfinite(t_capture - clock_offset_s):
        raise WireError("obs: bad t_capture")
    if not _is_int(seq):
        raise WireError("obs: bad seq")
    if not isinstance(info, dict):
        raise WireError("obs: bad info")
    values = {k[len(OBS_PREFIX):]: a for k, a in message.arrays.items() if k.startswith(OBS_PREFIX)}
    if features is not None:
        check_against(values, features, "observation")
    return Observation(values, t_capture - clock_offset_s, seq, info)
