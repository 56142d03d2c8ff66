"""Reading an HDF5 file from elsewhere (robomimic, Isaac Lab, robosuite) without trusting it.

The HDF5 importers (:mod:`.robomimic_import`, :mod:`.robosuite_import`) read every object
through these helpers, each refusal a one-line :class:`~.episode_store.StoreError` naming the
file and the object:

* :func:`member`: a group or dataset that exists, is readable, is of the expected kind and is
  not an external link to another file.
* :func:`read_steps` / :func:`read_array`: a numeric dataset whose size is within ``LIMITS``
  and whose claimed bytes fit what it holds in the file (at most ``MAX_RATIO`` times, deflate's
  largest ratio, of the bytes its chunks occupy: each inside the file, none shared), read only
  then and taken from the episode's budget; float values must be finite.
* :func:`attr`: one number or string, checked by its HDF5 shape before it is read.
* :func:`scalar_attrs`: an object's scalar attributes (numbers, bools, short strings), each
  checked by its HDF5 shape and size before it is read; anything else is named, not read.
* :func:`json_attr`: an attribute holding a bounded, strict JSON string.
* :func:`demo_names`: ``demo_<N>`` groups in numeric order, ``episodes=[N, ...]`` picking some.
* :func:`walk`: the datasets under a group, nested groups included, each with its path, the
  walk bounded in depth, datasets and links followed.
* :func:`check_source`: the store's ``source`` metadata built from the file fits in the
  store's ``.zattrs`` (which readers bound by ``LIMITS["json_bytes"]``).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from cadence.errors import CadenceError
from cadence.untrusted import LIMITS, check_int, check_shape

from .episode_budget import EpisodeBudget
from .episode_store import StoreError

MAX_RATIO = 1032            # deflate's largest decompression ratio (lzf and szip compress less)
HDF5_ERRORS = (KeyError, OSError, RuntimeError, TypeError, ValueError)   # what h5py raises on a bad object
MAX_ATTRS = 1024            # attributes of one object
MAX_ATTR_CHARS = 4096       # a string attribute kept in the store's metadata (longer ones are named, not kept)
MAX_MEMBERS = 1024          # datasets under one demonstration, nested groups included
MAX_CHUNKS = 2 ** 20       # chunks of one dataset (h5py's default chunking makes a few per megabyte)
MAX_VISITS = 4 * MAX_MEMBERS   # links followed by one walk
MAX_DEPTH = 16              # nesting of groups under a demonstration (also ends a cycle of hard links)
SOURCE_BYTES = LIMITS["json_bytes"] // 2    # the store's source metadata, as zarr writes it to .zattrs


@contextmanager
def reading(where: str) -> Iterator[None]:
    """What h5py raises on a corrupt or unreadable object, as one line naming ``where``."""
    try:
        yield
    except CadenceError:
        raise
    except MemoryError:
        raise StoreError(f"{where}: does not fit in this machine's free memory") from None
    except HDF5_ERRORS as exc:
        raise StoreError(f"{where}: unreadable ({exc})") from None


def open_file(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable HDF5 file ({exc})") from None


def where_of(path: Path, obj, name: str | None = None) -> str:
    """``<file>: <object path>`` (``<file>: data/demo_0/actions``)."""
    inside = obj.name.strip("/") if name is None else f"{obj.name.strip('/')}/{name}".strip("/")
    return f"{path}: {inside}"


def member(group, name: str, path: Path, kind: type):
    """``group[name]``, an h5py ``kind`` (Group or Dataset) inside this file."""
    where = where_of(path, group, name)
    with reading(where):
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise StoreError(f"{where}: a link to another file ({link.filename}), which cadence does not follow")
        obj = group[name] if link is not None else None
    if not isinstance(obj, kind):
        wanted = " or ".join(k.__name__.lower() for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise StoreError(f"{where}: expected an HDF5 {wanted}, "
                         f"found {'nothing' if obj is None else type(obj).__name__}")
    if isinstance(obj, h5py.Dataset):
        with reading(where):
            elsewhere = bool(obj.external) or obj.is_virtual
        if elsewhere:           # its bytes would come from any path the file names (a secret, a pipe, /dev/zero)
            raise StoreError(f"{where}: keeps its data in other files (HDF5 external storage or a virtual "
                             "dataset), which cadence does not read")
    return obj


def kind_of(group, name: str, path: Path) -> type:
    """``h5py.Group`` or ``h5py.Dataset``: what ``group[name]`` is (refusing external links)."""
    obj = member(group, name, path, (h5py.Group, h5py.Dataset))
    return h5py.Group if isinstance(obj, h5py.Group) else h5py.Dataset


def attr(obj, name: str, where: str):
    """``obj.attrs[name]`` (None if absent) as a Python value; numpy scalars become Python's. It
    must be one number or string, checked by its HDF5 shape before it is read (N variable-length
    strings can all point at one long string of the file: N times its size once read)."""
    with reading(f"{where}: attribute '{name}'"):
        if name not in obj.attrs:
            return None
        aid = obj.attrs.get_id(name)
        if aid.shape not in ((), (1,)) or not (aid.dtype.kind in "biuf" or h5py.check_string_dtype(aid.dtype)):
            raise StoreError(f"{where}: attribute '{name}' must be one number or string, got {aid.dtype} "
                             f"{aid.shape}"[:300])
        value = obj.attrs.get(name)
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


def text_attr(obj, name: str, where: str, max_chars: int) -> str | None:
    """A string attribute of at most ``max_chars`` characters (None if absent)."""
    value = attr(obj, name, where)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is None:
        return None
    if not isinstance(value, str):
        raise StoreError(f"{where}: attribute '{name}' must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise StoreError(f"{where}: attribute '{name}' holds {len(value):,} characters, more than {max_chars:,}")
    return value


def json_attr(obj, name: str, where: str):
    """``obj.attrs[name]``, a strict JSON string of at most ``LIMITS["json_bytes"]``, parsed
    (None if absent)."""
    value = attr(obj, name, where)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > LIMITS["json_bytes"]:
        raise StoreError(f"{where}: attribute '{name}' must be a JSON string, got {type(value).__name__}")
    try:
        return json.loads(value, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{where}: attribute '{name}' is not JSON ({exc})") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def scalar_attrs(obj, where: str, skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """``(kept, dropped)``: the object's scalar attributes (bool, int, finite float, string of at
    most ``MAX_ATTR_CHARS``) as Python values, and the names of the others (arrays, longer
    strings, other types), which are not read. ``skip`` names attributes handled elsewhere."""
    with reading(f"{where}: attributes"):
        names = list(obj.attrs.keys())
    if len(names) > MAX_ATTRS:
        raise StoreError(f"{where}: holds {len(names):,} attributes, more than {MAX_ATTRS:,}")
    kept, dropped = {}, []
    for name in names:
        if name in skip:
            continue
        with reading(f"{where}: attribute '{name}'"):
            aid = obj.attrs.get_id(name)
            shape, dtype = aid.shape, aid.dtype
        # checked before reading: one value of a number or a string (a variable-length string is
        # as long as the bytes the file holds for it: attributes are never compressed)
        string = h5py.check_string_dtype(dtype) is not None
        if shape not in ((), (1,)) or not (dtype.kind in "biuf" or string) or dtype.itemsize > 4 * MAX_ATTR_CHARS:
            dropped.append(name)
            continue
        value = attr(obj, name, where)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str) and len(value) <= MAX_ATTR_CHARS:
            kept[name] = value
        elif isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
            kept[name] = value
        else:
            dropped.append(name)
    return kept, dropped


def episodes_option(value) -> list[int] | None:
    """``episodes=[N, ...]`` (demo numbers: ``demo_N``; ``"demo_N"`` also taken) as a list of
    distinct ints (None: every demonstration)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise StoreError(f"episodes must be a list of demo numbers (N of demo_N), got {value!r}"[:300])
    if not value:
        raise StoreError("episodes=[] selects no demonstration (leave it out to import every one)")
    if len(value) > LIMITS["episodes"]:
        raise StoreError(f"episodes lists {len(value):,} values, more than {LIMITS['episodes']:,}")
    numbers = []
    for i, v in enumerate(value):
        if isinstance(v, str) and re.fullmatch(r"demo_[0-9]{1,12}", v):
            v = int(v[5:])
        numbers.append(check_int("episodes", f"episodes[{i}]", v, 0, LIMITS["episodes"]))
    twice = sorted(n for n, c in Counter(numbers).items() if c > 1)
    if twice:
        raise StoreError(f"episodes lists demo_{twice[0]} more than once")
    return numbers


def demo_names(data, path: Path, episodes: list[int] | None = None) -> list[str]:
    """The ``demo_<N>`` groups of ``data`` in numeric order (``demo_10`` after ``demo_9``);
    with ``episodes``, only ``demo_<N>`` for those N (each must be present)."""
    with reading(f"{path}: data"):
        names = list(data.keys())
    if len(names) > LIMITS["episodes"]:
        raise StoreError(f"{path}: data/ holds {len(names):,} demonstrations, more than {LIMITS['episodes']:,}")
    bad = [n for n in names if not re.fullmatch(r"demo_[0-9]{1,12}", n)]
    if bad:
        raise StoreError(f"{path}: data/ holds groups that are not demo_<N>: {bad[:5]}")
    if not names:
        raise StoreError(f"{path}: data/ holds no demonstrations")
    by_number = {int(n[5:]): n for n in names}
    if episodes is None:
        return [by_number[n] for n in sorted(by_number)]
    absent = [n for n in episodes if n not in by_number]
    if absent:
        known = sorted(by_number)
        raise StoreError(f"{path}: data/ has no demo_{absent[0]} (episodes= asks for it; the file holds "
                         f"{len(known)} demonstrations, demo_{known[0]} .. demo_{known[-1]})")
    return [by_number[n] for n in sorted(episodes)]


def _check_numeric(ds, where: str) -> None:
    with reading(where):
        shape, dtype = ds.shape, ds.dtype
    if shape is None:
        raise StoreError(f"{where}: holds no values (an empty HDF5 dataspace)")
    if dtype.kind not in "biuf":
        raise StoreError(f"{where}: holds {ds.dtype}, not numbers")


def bounded_read(ds, where: str, budget: EpisodeBudget | None = None) -> np.ndarray:
    """``ds[()]`` once its claimed bytes are known to fit what it holds in the file
    (:func:`stored_bytes`) and, with ``budget``, taken from the episode's; finite floats."""
    nbytes = math.prod(ds.shape) * ds.dtype.itemsize
    with reading(where):
        stored = stored_bytes(ds, where)
        if nbytes > MAX_RATIO * stored:
            raise StoreError(f"{where}: claims {nbytes:,} bytes but holds {stored:,} in the file")
        if budget is not None:
            budget.take(nbytes, where)
        values = ds[()]
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise StoreError(f"{where}: holds NaN or infinite values")
    return values


def stored_bytes(ds, where: str) -> int:
    """The bytes ``ds`` holds in its file, counted from where they lie: each chunk inside the file
    and no two sharing bytes (a chunk index can name one stored chunk thousands of times, which
    HDF5's own storage size counts each time)."""
    dsid = ds.id
    size = ds.file.id.get_filesize()
    layout = dsid.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset, stored = dsid.get_offset(), dsid.get_storage_size()
        if offset is not None and offset + stored > size:
            raise StoreError(f"{where}: its data lies past the end of the file")
        return stored if offset is not None else 0
    if layout != h5py.h5d.CHUNKED:
        return dsid.get_storage_size()                # compact: inside the object's header
    count = dsid.get_num_chunks()
    if count > MAX_CHUNKS:
        raise StoreError(f"{where}: stored in {count:,} chunks, more than {MAX_CHUNKS:,}")
    found: list[tuple[int, int]] = []
    dsid.chunk_iter(lambda info: found.append((-1 if info.byte_offset is None else info.byte_offset, info.size)))
    extents = np.array(found, np.int64).reshape(-1, 2)
    extents = extents[np.argsort(extents[:, 0], kind="stable")]
    starts, ends = extents[:, 0], extents[:, 0] + extents[:, 1]
    if count and (starts[0] < 0 or ends.max() > size):
        raise StoreError(f"{where}: a chunk lies outside the file")
    if (starts[1:] < np.maximum.accumulate(ends)[:-1]).any():
        raise StoreError(f"{where}: chunks that share bytes in the file (one stored chunk named many times)")
    return int(extents[:, 1].sum())


def read_steps(ds, where: str, length: int, budget: EpisodeBudget | None = None) -> np.ndarray:
    """A numeric dataset of ``length`` steps, each within the limits, read once it is known
    to fit the bytes it holds on disk (and taken from ``budget``); floating-point values must be finite."""
    _check_numeric(ds, where)
    if ds.ndim == 0 or ds.shape[0] != length:
        raise StoreError(f"{where}: has shape {ds.shape}, not {length} steps like the demo's 'actions'")
    check_int(where, "steps", length, 1, LIMITS["frames"])
    if ds.ndim > 1:
        check_shape(where, "per-step shape", list(ds.shape[1:]))
    return bounded_read(ds, where, budget)


def read_array(ds, where: str, max_elements: int) -> np.ndarray:
    """A small numeric dataset of any shape with at most ``max_elements`` values."""
    _check_numeric(ds, where)
    if ds.ndim > LIMITS["dims"] or math.prod(ds.shape) > max_elements:
        raise StoreError(f"{where}: has shape {ds.shape}, more than the {max_elements:,} values allowed here")
    return bounded_read(ds, where)


def walk(group, path: Path, prefix: tuple[str, ...] = (), depth: int = 0,
         found: list | None = None, visits: list[int] | None = None) -> list[tuple[tuple[str, ...], h5py.Dataset]]:
    """``[(names, dataset)]`` for every dataset under ``group``, ``names`` its path below it
    (``("articulation", "robot", "joint_position")``), in name order, nested groups included. At
    most ``MAX_VISITS`` links are followed in all: groups linking the next one several times
    over would make the paths to walk grow as a power of the depth."""
    found = [] if found is None else found
    visits = [0] if visits is None else visits
    if depth > MAX_DEPTH:
        raise StoreError(f"{where_of(path, group)}: groups nested more than {MAX_DEPTH} deep")
    with reading(where_of(path, group)):
        names = sorted(group.keys())
    for name in names:
        visits[0] += 1
        if visits[0] > MAX_VISITS:
            raise StoreError(f"{where_of(path, group)}: more than {MAX_VISITS:,} groups and datasets to walk "
                             "(counting every link to one)")
        if kind_of(group, name, path) is h5py.Group:
            walk(member(group, name, path, h5py.Group), path, (*prefix, name), depth + 1, found, visits)
        else:
            found.append(((*prefix, name), member(group, name, path, h5py.Dataset)))
        if len(found) > MAX_MEMBERS:
            raise StoreError(f"{where_of(path, group)}: holds more than {MAX_MEMBERS:,} datasets")
    return found


def zattrs_bytes(value) -> int:
    """Bytes of ``value`` as zarr v2 writes attributes (indented, sorted, ASCII JSON)."""
    return len(json.dumps(value, indent=4, sort_keys=True, ensure_ascii=True, separators=(",", ": ")))


class SourceBudget:
    """A running count of the metadata kept per demo, so that a file whose ``source`` would not
    fit is refused at the demo that overflows it, not after every demo was imported."""

    def __init__(self, path: Path, what: str, base: dict | None = None):
        """``base``: the source metadata kept whatever the demos (refused here if it alone is too large)."""
        self.path, self.what, self.used, self.seen = path, what, 0, 0
        if base is not None:
            self.used = zattrs_bytes(base)
            if self.used > SOURCE_BYTES:
                _too_large(path, "the file's own attributes", self.used)

    def add(self, entry: dict, model_files: dict[str, int]) -> None:
        new = list(model_files)[self.seen:]
        self.seen = len(model_files)
        self.used += zattrs_bytes(entry) + sum(zattrs_bytes(text) for text in new)
        if self.used > SOURCE_BYTES:
            _too_large(self.path, self.what, self.used)


def _too_large(path: Path, what: str, size: int):
    raise StoreError(f"{path}: the metadata kept from it ({what}) takes {size:,} bytes, more than the "
                     f"{SOURCE_BYTES:,} a store's source may hold (import fewer demonstrations with "
                     f"episodes=[...])")


def check_source(source: dict, path: Path, what: str) -> dict:
    """``source`` if it fits the store's metadata (``SOURCE_BYTES``), else a StoreError saying
    which part of the file (``what``) makes it too large."""
    size = zattrs_bytes(source)
    if size > SOURCE_BYTES:
        _too_large(path, what, size)
    return source
