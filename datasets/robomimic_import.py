"""Import a robomimic HDF5 dataset into an episode store.

robomimic layout: ``data`` (attribute ``env_args``, JSON) holds one group per demonstration,
``demo_0, demo_1, ...``, each with ``actions`` (T, Da), ``obs/<key>`` (T, ...), and usually
``states`` (T, Ds, simulator states), ``rewards`` (T,) and ``dones`` (T,). ``mask/<filter>``
lists demo names per split (e.g. ``train``, ``valid``).

Every demonstration becomes one episode, in numeric order (``demo_10`` after ``demo_9``), with
``action`` from ``actions``, every ``obs/<key>`` under its own name, ``states`` as
``sim_state``, ``rewards`` as ``reward`` and ``dones`` as ``done``. ``next_obs`` is not
copied: it is ``obs`` shifted by one step. ``env_args``, the filter masks and the file name
go to the store's ``source`` attribute. The store is written beside its target and moved
into place at the end, so a failed import leaves nothing behind.

The file is data from elsewhere: a group or dataset that is missing, unreadable, of the wrong
kind or an external link to another file, a dataset that is not numeric, not within the
``LIMITS`` (steps, per-step elements), not as long as the demo's ``actions`` (and its
``num_samples`` attribute), or larger than its bytes on disk can decompress to, and
``env_args`` or masks that are not JSON / strings are refused with a
:class:`~cadence.errors.CadenceError` naming the file and the object, before it is read.
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
from tqdm.auto import tqdm

from cadence.errors import CadenceError
from cadence.untrusted import LIMITS, check_int, check_shape

from .episode_store import EpisodeStore, StoreError
from .staged_store import staged_store

RENAMED = {"actions": "action", "states": "sim_state", "rewards": "reward", "dones": "done"}
DEFAULT_FPS = 20.0          # robomimic's robosuite datasets record at 20 Hz
MAX_RATIO = 1032            # deflate's largest decompression ratio (lzf and szip compress less)
HDF5_ERRORS = (KeyError, OSError, RuntimeError, TypeError, ValueError)   # what h5py raises on a bad object


@contextmanager
def _reading(where: str) -> Iterator[None]:
    """What h5py raises on a corrupt or unreadable object, as one line naming ``where``."""
    try:
        yield
    except CadenceError:
        raise
    except HDF5_ERRORS as exc:
        raise StoreError(f"{where}: unreadable ({exc})") from None


def _member(group, name: str, path: Path, kind: type):
    """``group[name]``, an h5py ``kind`` (Group or Dataset) inside this file."""
    where = f"{path}: {group.name.strip('/')}/{name}".replace(": /", ": ")
    with _reading(where):
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise StoreError(f"{where}: a link to another file ({link.filename}), which cadence does not follow")
        obj = group[name] if link is not None else None
    if not isinstance(obj, kind):
        raise StoreError(f"{where}: expected an HDF5 {kind.__name__.lower()}, "
                         f"found {'nothing' if obj is None else type(obj).__name__}")
    return obj


def _attr(obj, name: str, where: str):
    with _reading(f"{where}: attribute '{name}'"):
        value = obj.attrs.get(name)
    return value.item() if isinstance(value, np.generic) else value


def _demo_names(data, path: Path) -> list[str]:
    names = list(data.keys())
    if len(names) > LIMITS["episodes"]:
        raise StoreError(f"{path}: data/ holds {len(names):,} demonstrations, more than {LIMITS['episodes']:,}")
    bad = [n for n in names if not re.fullmatch(r"demo_[0-9]+", n)]
    if bad:
        raise StoreError(f"{path}: data/ holds groups that are not demo_<N>: {bad[:5]}")
    if not names:
        raise StoreError(f"{path}: data/ holds no demonstrations")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _episode(demo, name: str, path: Path) -> dict[str, np.ndarray]:
    where = f"{path}: data/{name}"
    if "actions" not in demo or "obs" not in demo:
        raise StoreError(f"{where} lacks 'actions' or 'obs' (has {sorted(demo.keys())})")
    sources = {RENAMED[k]: k for k in RENAMED if k in demo}       # store key -> path inside the demo
    for key in _member(demo, "obs", path, h5py.Group).keys():
        if key in sources:
            raise StoreError(f"{where}/obs/{key} collides with the imported key '{key}'")
        sources[key] = f"obs/{key}"
    datasets = {key: _member(demo, source, path, h5py.Dataset) for key, source in sources.items()}
    length = datasets["action"].shape[0] if datasets["action"].ndim else 0
    samples = _attr(demo, "num_samples", where)
    if samples is not None and check_int(where, "num_samples", samples, 0, LIMITS["frames"]) != length:
        raise StoreError(f"{where}: 'num_samples' is {samples} but 'actions' has {length} steps")
    episode = {}
    for key, ds in datasets.items():
        values = _read(ds, f"{path}: {ds.name.lstrip('/')}", length)
        episode[key] = values[:, None] if values.ndim == 1 and key not in ("reward", "done") else values
    return episode


def _read(ds, where: str, length: int) -> np.ndarray:
    """A numeric dataset of ``length`` steps, each within the limits, read once it is known
    to fit the bytes it holds on disk; floating-point values must be finite."""
    if ds.dtype.kind not in "biuf":
        raise StoreError(f"{where}: holds {ds.dtype}, not numbers")
    if ds.ndim == 0 or ds.shape[0] != length:
        raise StoreError(f"{where}: has shape {ds.shape}, not {length} steps like the demo's 'actions'")
    check_int(where, "steps", length, 1, LIMITS["frames"])
    if ds.ndim > 1:
        check_shape(where, "per-step shape", list(ds.shape[1:]))
    nbytes = math.prod(ds.shape) * ds.dtype.itemsize
    with _reading(where):
        stored = ds.id.get_storage_size()
        if nbytes > MAX_RATIO * stored:
            raise StoreError(f"{where}: claims {nbytes:,} bytes but holds {stored:,} on disk")
        values = ds[()]
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise StoreError(f"{where}: holds NaN or infinite values")
    return values


def _env_args(data, path: Path):
    """``data.attrs["env_args"]``, a JSON string, parsed (None if absent)."""
    where = f"{path}: data"
    text = _attr(data, "env_args", where)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text is None:
        return None
    if not isinstance(text, str) or len(text) > LIMITS["json_bytes"]:
        raise StoreError(f"{where}: attribute 'env_args' must be a JSON string, got {type(text).__name__}")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise StoreError(f"{where}: attribute 'env_args' is not JSON ({exc})") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _mask(f, path: Path) -> dict[str, list[str]]:
    if "mask" not in f:
        return {}
    masks, group = {}, _member(f, "mask", path, h5py.Group)
    for key in group:
        ds = _member(group, key, path, h5py.Dataset)
        if ds.dtype.kind not in "SOU" or ds.ndim != 1 or ds.shape[0] > LIMITS["episodes"]:
            raise StoreError(f"{path}: mask/{key}: expected a list of demo names, got {ds.dtype} {ds.shape}")
        with _reading(f"{path}: mask/{key}"):
            names = ds[()]
        if not all(isinstance(n, (bytes, str)) for n in names):
            raise StoreError(f"{path}: mask/{key}: expected a list of demo names")
        masks[key] = sorted(n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names)
    return masks


def import_robomimic(hdf5: str | os.PathLike, out: str | os.PathLike, fps: float = DEFAULT_FPS,
                     overwrite: bool = False, progress: bool = True) -> EpisodeStore:
    hdf5, out = Path(hdf5), Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    try:
        f = h5py.File(hdf5, "r")
    except (OSError, ValueError) as exc:
        raise StoreError(f"{hdf5}: not a readable HDF5 file ({exc})") from None
    with f, _reading(str(hdf5)):           # what a corrupt file breaks outside the named objects
        if "data" not in f:
            raise StoreError(f"{hdf5}: no 'data' group: not a robomimic dataset")
        data = _member(f, "data", hdf5, h5py.Group)
        names, source = _demo_names(data, hdf5), {"format": "robomimic", "file": str(hdf5.resolve()),
                                                  "masks": _mask(f, hdf5), "env_args": _env_args(data, hdf5)}
        with staged_store(out, fps) as store:
            for name in tqdm(names, desc=f"import {hdf5.name}", disable=not progress):
                store.append_episode(_episode(_member(data, name, hdf5, h5py.Group), name, hdf5))
            store.set_source(source)
    return EpisodeStore.open(out)
