"""Reading files from elsewhere: checkpoints, exports, stores and imported datasets.

A file someone else wrote is data, never code, and never a reason to allocate without bound.
The readers here are the one place that parses such files; each raises
:class:`UntrustedFileError` (a :class:`~cadence.errors.CadenceError`) naming the file and the
key, so a bad file ends a command with one line. The stated maxima (``LIMITS``) are documented
in ``docs/security.md``; a value above them is refused before anything is allocated for it.
"""
from __future__ import annotations

import json
import math
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from cadence.errors import CadenceError


class UntrustedFileError(CadenceError, ValueError):
    """A file from elsewhere that cadence refuses to read (the message names file and key)."""


LIMITS = {
    "json_bytes": 64 * 2 ** 20,        # a JSON or YAML metadata file (policy.json with anchors is the largest)
    "safetensors_header_bytes": 16 * 2 ** 20,
    "tensors_per_file": 100_000,
    "weights_bytes": 8 * 2 ** 30,      # a weights file (a 2-billion-parameter fp32 policy)
    "graph_elements": 2 ** 28,         # elements of all the tensors an ONNX graph computes, per batch row
    "parameters": 2 * 10 ** 9,         # parameters + buffers of the network a config builds
    "obs_elements": 2 ** 24,           # elements of one observation key at one step (a 2048x2048 RGB image is 12.6M)
    "obs_keys": 64,
    "dims": 8,                         # dimensions of one observation key
    "horizon": 4096,                   # obs_horizon, pred_horizon, exec_horizon
    "action_dim": 4096,
    "diffusion_steps": 100_000,        # training timesteps of a noise schedule
    "sample_steps": 100_000,           # denoising calls per chunk
    "anchors": 4096,                   # anchors per task (truncated anchor diffusion)
    "tasks": 1024,                     # members of a multitask suite
    "width": 65_536,                   # any layer width, feature size or count of heads / experts / layers
    "step": 10 ** 12,                  # a training step counter
    "episodes": 10 ** 8,               # episodes in a store or dataset
    "frames": 10 ** 11,                # steps in a store or dataset
    "chunk_bytes": 2 ** 28,            # one decoded chunk of a zarr array (PushT's image chunks: 18 MB)
    "zip_directory_bytes": 2 ** 28,    # a zipped store's list of members (about 3 million chunks)
    "store_keys": 1024,                # arrays under a store's data/
    "episode_bytes": 2 ** 32,          # one imported episode as decoded (3,000 frames of 480x640 RGB: 2.8 GB)
}


def limit(name: str) -> int:
    return LIMITS[name]


def _fail(where: Any, what: str) -> UntrustedFileError:
    return UntrustedFileError(f"{where}: {what}")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file: a named pipe or a device
    would block the reader or never end. Opening does not block (O_NONBLOCK) whatever it is."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _fail(path, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The file's bytes, refused (without reading them) above ``max_bytes``."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise _fail(path, f"{size:,} bytes, more than the {max_bytes:,} this file may have")
            data = f.read(size + 1)        # what the file holds (never the limit: that would allocate it)
            if len(data) > max_bytes:
                raise _fail(path, f"more than the {max_bytes:,} bytes this file may have")
            return data
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def finite_float(text: str) -> float:
    """A JSON float literal as a float, refused (ValueError) where it overflows (``1e400``)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} overflows a float")
    return value


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None if it is not a number (bool included) or not finite
    (an int of 400 digits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def read_json(path: str | os.PathLike, max_bytes: int | None = None, allow_nonfinite: bool = False) -> Any:
    """Parsed JSON of a bounded file. NaN / Infinity literals are refused unless allowed."""
    return parse_json(read_bytes(path, max_bytes or LIMITS["json_bytes"]), path, allow_nonfinite)


def parse_json(data: bytes, where: str | os.PathLike, allow_nonfinite: bool = False) -> Any:
    """Parsed JSON of bytes already read within a bound (errors name ``where``)."""
    try:
        text = data.decode("utf-8")
        return json.loads(text) if allow_nonfinite else json.loads(text, parse_constant=_reject_constant,
                                                                  parse_float=finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(where, f"not valid JSON ({_short(exc)})") from None


class _PlainLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: nine nested levels of nine aliases are 9^9 paths in a
    few hundred bytes, which walking the result (for interpolations, for checks) would take
    forever; the files cadence reads (saved configs, rosbag2 metadata) never use them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}): aliases are not read",
                                              event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """Parsed YAML (safe loader: plain data only, no tags that build objects, no aliases) of a
    bounded file."""
    data = read_bytes(path, max_bytes or LIMITS["json_bytes"])
    try:
        return yaml.load(data.decode("utf-8"), Loader=_PlainLoader)
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        raise _fail(path, f"not valid YAML ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def interpolations(data: Any, prefix: str = "") -> list[str]:
    """Keys of ``data`` whose string values (or keys) hold an OmegaConf interpolation ``${...}``."""
    found = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            name = f"{prefix}{key}"
            if isinstance(key, str) and "${" in key:
                found.append(name)
            found += interpolations(value, name + ".")
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            found += interpolations(value, f"{prefix[:-1] if prefix else ''}[{i}].")
    elif isinstance(data, str) and "${" in data:
        found.append(prefix[:-1] if prefix.endswith(".") else prefix)
    return found


def check_int(where: Any, name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"'{name}' must be an integer, got {value!r}"[:300])
    if not low <= value <= high:
        raise _fail(where, f"'{name}' is {value}, outside [{low}, {high:,}]")
    return value


def check_number(where: Any, name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite number in [low, high]."""
    try:
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:             # an integer of hundreds of digits
        finite = False
    if not finite:
        raise _fail(where, f"'{name}' must be a finite number, got {str(value)[:100]}")
    if not low <= value <= high:
        raise _fail(where, f"'{name}' is {value}, outside [{low}, {high}]")
    return float(value)


def check_shape(where: Any, name: str, shape: Any, max_elements: int | None = None) -> tuple[int, ...]:
    """A per-step observation shape: a list of 1..``dims`` positive ints whose product is bounded."""
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= LIMITS["dims"]:
        raise _fail(where, f"'{name}' must be a list of 1 to {LIMITS['dims']} sizes, got {shape!r}"[:300])
    dims = tuple(check_int(where, f"{name}[{i}]", d, 1, LIMITS["obs_elements"]) for i, d in enumerate(shape))
    bound = max_elements or LIMITS["obs_elements"]
    if math.prod(dims) > bound:
        raise _fail(where, f"'{name}' {list(dims)} has {math.prod(dims):,} elements, more than {bound:,}")
    return dims


def inside(folder: str | os.PathLike, name: Any, where: Any, key: str) -> Path:
    """``folder / name`` for a plain file name that stays inside ``folder`` (no separators, no
    ``..``, not absolute, and not a link leading out)."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise _fail(where, f"'{key}' must be a file name inside {folder}, got {name!r}"[:300])
    folder = Path(folder)
    path = folder / name
    if path.exists() and folder.resolve() not in path.resolve().parents:
        raise _fail(where, f"'{key}' {name!r} leads out of {folder}")
    return path


SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1}


def safetensors_header(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Names -> (dtype, shape) of a safetensors file, from its header alone, checked against the
    file's size (offsets in order, within the file, matching each tensor's size). Nothing of the
    tensors is read."""
    path = Path(path)
    max_bytes = max_bytes or LIMITS["weights_bytes"]
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, "not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", prefix)
            if n > LIMITS["safetensors_header_bytes"] or 8 + n > size:
                raise _fail(path, f"not a safetensors file (header length {n:,} for a file of {size:,} bytes)")
            raw = f.read(n)
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    if size > max_bytes:
        raise _fail(path, f"{size:,} bytes, more than the {max_bytes:,} a weights file may have")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(path, f"corrupt safetensors header ({_short(exc)})") from None
    if not isinstance(header, dict):
        raise _fail(path, "corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    if len(header) > LIMITS["tensors_per_file"]:
        raise _fail(path, f"{len(header):,} tensors, more than {LIMITS['tensors_per_file']:,}")
    out, spans = {}, []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"corrupt safetensors header at tensor {name!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise _fail(path, f"tensor {name!r} has dtype {dtype!r} (allowed: {sorted(SAFETENSORS_DTYPES)})")
        if (not isinstance(shape, list) or len(shape) > 16
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= size for d in shape)):
            raise _fail(path, f"tensor {name!r} has shape {shape!r}"[:300])
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= size - 8 - n
                or offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPES[dtype]):
            raise _fail(path, f"tensor {name!r} has data offsets {offsets!r} that do not fit its shape or the file"[:300])
        spans.append(tuple(offsets))
        out[name] = (dtype, tuple(shape))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise _fail(path, "corrupt safetensors header (tensors overlap)")
    return out


def load_safetensors(path: str | os.PathLike, device: str = "cpu", max_bytes: int | None = None,
                     finite: bool = True) -> dict:
    """The tensors of a safetensors file whose header checks out (:func:`safetensors_header`),
    each finite unless ``finite=False``."""
    import torch
    from safetensors.torch import load_file

    safetensors_header(path, max_bytes)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:          # the library's own checks: one line naming the file
        raise _fail(path, f"corrupt safetensors file ({_short(exc)})") from None
    if finite:
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor.float()).all()):
                raise _fail(path, f"tensor {name!r} holds NaN or infinite values (in float32)")
    return tensors
