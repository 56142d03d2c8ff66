"""Episode store: demonstrations on zarr, in the Diffusion Policy ReplayBuffer layout.

Layout (a zarr v2 directory, or a zip of one: read only, e.g. Diffusion Policy's and UMI's ``.zarr.zip``)::

    data/<key>          every feature, all episodes concatenated along time (axis 0)
    meta/episode_ends   int64, cumulative end index of each episode
    .zattrs             {"cadence_store": 1, "fps": ..., "features": {key: {shape, dtype}},
                         "stats": {...}, "source": {...}}  (optional: stores written elsewhere open too)

``meta/episode_ends`` is the commit record. Appending an episode first writes every data
array past the committed length, then commits by writing the new ``episode_ends`` chunk
and only after it the array's shape (each one atomic file replace). A process killed at any
point leaves a store that opens with exactly the episodes committed before; steps past the
last episode end are an interrupted append's leftovers, ignored on read and overwritten by
the next append.

A store written elsewhere is data, never code: before zarr opens it, its group and array
metadata and the chunk files holding committed steps are checked (:mod:`.zarr_checks`), and so
are the attributes read from ``.zattrs`` (``fps`` a number, ``features``, ``stats`` and
``source`` objects; a cached statistic that is not finite numbers of the key's per-step shape
is recomputed from the data). Floating-point data read must be finite. Anything else is
refused with a :class:`~cadence.errors.CadenceError` naming the file and the key.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import zarr

from cadence.errors import CadenceError
from cadence.untrusted import LIMITS, check_number

from .store_files import DirectoryFiles, is_zip_store, store_files
from .zarr_checks import ArrayMeta, Files, bounded, check_array, check_chunks, check_group, reading

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ENDS = "meta/episode_ends"
STATS = ("min", "max", "mean", "std")
MAX_VALUE = 1e30        # |a float value| a store holds: its squares (statistics) and float32 training stay finite


class StoreError(CadenceError, ValueError):
    """A store (or an episode offered to it) is malformed; the message names what and where."""


def valid_key(key: str) -> bool:
    """Whether ``key`` can name an array ``data/<key>``: one printable file name of at most 255
    bytes, not hidden, without path separators."""
    return (isinstance(key, str) and key.isprintable() and key.strip() != "" and not key.startswith(".")
            and "/" not in key and "\\" not in key and len(key.encode()) <= 255)


@dataclass(frozen=True)
class FeatureSpec:
    shape: tuple[int, ...]   # per-step shape
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


class EpisodeStore:
    """Open with :meth:`open` (existing) or :meth:`create` (new, empty)."""

    def __init__(self, root: zarr.Group, path: Path, writable: bool, files: Files | None = None):
        self._root = root
        self.path = path
        self.writable = writable
        self._files = files or DirectoryFiles(path)
        self._arrays: dict[str, zarr.Array] = {}
        self._checked: dict[str, ArrayMeta] = {}       # what the checks read of each array's .zarray
        self._validate()

    # --- construction ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "EpisodeStore":
        """Open an existing store (a directory, or a zip of one: read only); ``mode="a"`` to
        append. Raises :class:`StoreError`."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise StoreError(f"{path}: no episode store here")
        if mode == "a" and is_zip_store(path):
            raise StoreError(f"{path}: a zipped store is read only (append to a directory store)")
        files = store_files(path)
        if not files.is_file(".zgroup"):
            raise StoreError(f"{path}: not a zarr group (no .zgroup)")
        check_group(files, "")
        with reading(path):
            root = zarr.open_group(files.zarr_store(), mode="r" if mode == "r" else "r+")
        return cls(root, path, writable=(mode == "a"), files=files)

    @classmethod
    def create(cls, path: str | os.PathLike, fps: float, overwrite: bool = False) -> "EpisodeStore":
        """Create an empty store. Refuses to replace an existing one unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path}: already exists (pass overwrite=True to replace it)")
        root = zarr.open_group(str(path), mode="w")
        root.create_group("data")
        root.require_group("meta").zeros("episode_ends", shape=(0,), chunks=(4096,), dtype=np.int64)
        root.attrs.update({"cadence_store": FORMAT_VERSION, "fps": float(fps), "features": {}})
        return cls(root, path, writable=True)

    # --- validation --------------------------------------------------------------------
    def _validate(self) -> None:
        where, files = self.path, self._files
        for name, kind, marker in (("data", "group", ".zgroup"), ("meta", "group", ".zgroup"),
                                   (_ENDS, "array", ".zarray")):
            if not files.is_file(f"{name}/{marker}"):
                raise StoreError(f"{where}: missing {kind} '{name}'")
            if kind == "group" and files.is_file(f"{name}/.zarray"):     # zarr would open it as an array, unchecked
                raise StoreError(f"{where}: '{name}' is both a group and an array (a .zarray beside its .zgroup)")
            if kind == "group":
                check_group(files, name)
        self._check_attrs()
        meta = check_array(files, _ENDS, LIMITS["episodes"])
        if len(meta.shape) != 1 or meta.dtype[-2] not in "iu":
            raise StoreError(f"{where / _ENDS}: must be a 1-D integer array, got {meta.dtype} {list(meta.shape)}")
        check_chunks(files, _ENDS, meta, meta.shape[0])
        self._checked[_ENDS] = meta
        with reading(where / _ENDS):
            ends = self._array(_ENDS)[:]
        if len(ends) and ends.max() > LIMITS["frames"]:
            raise StoreError(f"{where / _ENDS}: the episodes end at step {ends.max()}, more than "
                             f"{LIMITS['frames']:,}")
        ends = ends.astype(np.int64)
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            bad = int(np.argmax(np.diff(np.concatenate([[0], ends])) <= 0))
            raise StoreError(f"{where}: '{_ENDS}' must be strictly increasing and positive "
                             f"(episode {bad} ends at {ends[bad]})")
        self._ends = ends
        n = self.n_steps
        keys = self.keys
        if len(keys) > LIMITS["store_keys"]:
            raise StoreError(f"{where}: {len(keys):,} arrays under data/, more than {LIMITS['store_keys']:,}")
        for key in keys:
            if not valid_key(key):       # zarr reads "a\\b" as "a/b": the checks must see the name zarr opens
                raise StoreError(f"{where}: data/{key!r} is not an array name cadence reads (a printable file "
                                 "name without path separators)"[:300])
            meta = check_array(files, f"data/{key}", LIMITS["frames"])
            if meta.shape[0] < n:
                raise StoreError(f"{where}: data/{key} has {meta.shape[0]} steps but '{_ENDS}' says "
                                 f"the episodes end at step {n}")
            if meta.shape[0] > n:
                log.warning("%s: data/%s has %d steps past the last episode end (an interrupted "
                            "append); they are ignored", where, key, meta.shape[0] - n)
            check_chunks(files, f"data/{key}", meta, n)
            self._checked[f"data/{key}"] = meta
        declared = self._root.attrs.get("features", {})
        missing = sorted(set(declared) - set(self.keys))
        if missing and n > 0:
            raise StoreError(f"{where}: features {missing} are declared in .zattrs but missing under data/")

    def _check_attrs(self) -> None:
        """The root ``.zattrs`` (bounded JSON): ``fps`` a number, ``features``, ``stats`` and
        ``source`` objects, where present."""
        where = self._files.where(".zattrs")
        attrs = self._files.json(".zattrs") if self._files.is_file(".zattrs") else {}
        if not isinstance(attrs, dict):
            raise StoreError(f"{where}: expected a JSON object")
        if attrs.get("fps") is not None:
            check_number(where, "fps", attrs["fps"], low=0)
        for key in ("features", "stats", "source"):
            if not isinstance(attrs.get(key, {}), dict):
                raise StoreError(f"{where}: '{key}' must be an object, got {attrs[key]!r}"[:300])

    def _array(self, name: str) -> zarr.Array:
        """The (checked) array ``name``, opened once, decoding into chunk-sized buffers."""
        if name not in self._arrays:
            with reading(self.path / name):
                array = self._root[name]
            checked = self._checked.get(name)
            if checked is not None and not checked.describes(array):
                raise StoreError(f"{self.path / name}: zarr opened another array than the one checked "
                                 f"({array.shape} {array.dtype} in {array.chunks} against {checked})"[:400])
            self._arrays[name] = bounded(array)
        return self._arrays[name]

    def _read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Steps ``start:stop`` of ``data/key``; floating-point values must be finite."""
        where = self.path / "data" / key
        with reading(where):
            values = self._array(f"data/{key}")[start:stop]
        if values.dtype.kind == "f":
            rows = _block_rows(values.shape)
            for begin in range(0, len(values), rows):
                part = values[begin: begin + rows]
                bad = ~(np.abs(part.reshape(len(part), -1)) <= MAX_VALUE).all(axis=1)    # NaN too
                if bad.any():
                    raise StoreError(f"{where}: holds NaN or infinite values, or beyond +-{MAX_VALUE:g} (first at "
                                     f"step {start + begin + int(np.argmax(bad))})")
        return values

    # --- reading -----------------------------------------------------------------------
    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def keys(self) -> list[str]:
        return sorted(self._root["data"].array_keys())

    @property
    def fps(self) -> float | None:
        fps = self._root.attrs.get("fps")
        return None if fps is None else float(fps)

    @property
    def source(self) -> dict:
        """Where an imported store came from (format, file, its metadata); empty otherwise."""
        return dict(self._root.attrs.get("source", {}))

    def set_source(self, source: Mapping) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only")
        self._root.attrs["source"] = dict(source)

    @property
    def features(self) -> dict[str, FeatureSpec]:
        return {k: FeatureSpec(tuple(a.shape[1:]), str(a.dtype))
                for k, a in ((k, self._array(f"data/{k}")) for k in self.keys)}

    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._ends]))

    def load(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All committed steps of ``keys`` (default: every key), as numpy arrays."""
        have = self.keys
        keys = have if keys is None else list(keys)
        for key in keys:
            if key not in have:
                raise StoreError(f"{self.path}: no key data/{key} (have {have})")
        return {k: self._read(k, 0, self.n_steps) for k in keys}

    def episode(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One episode's values of ``keys`` (default: every key)."""
        if not -self.n_episodes <= index < self.n_episodes:
            raise IndexError(f"episode {index} out of range ({self.n_episodes} episodes)")
        index %= self.n_episodes
        start = 0 if index == 0 else int(self._ends[index - 1])
        return {k: self._read(k, start, int(self._ends[index])) for k in (self.keys if keys is None else keys)}

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """Per-element min, max, mean and std over all committed steps of ``key``."""
        if key not in self.keys:
            raise StoreError(f"{self.path}: no key data/{key} (have {self.keys})")
        cached = self._cached_stats(key)
        if cached is not None:
            return cached
        stats = self._compute_stats(key)
        if self.writable:
            all_stats = dict(self._root.attrs.get("stats", {}))
            all_stats[key] = {"n_steps": self.n_steps, **{s: v.tolist() for s, v in stats.items()}}
            self._root.attrs["stats"] = all_stats
        return stats

    def _cached_stats(self, key: str) -> dict[str, np.ndarray] | None:
        """The statistics ``.zattrs`` holds for ``key`` at the committed length, if they are
        finite numbers of the key's per-step shape (None otherwise: they are recomputed)."""
        entry = self._root.attrs.get("stats", {}).get(key)
        if not isinstance(entry, dict) or entry.get("n_steps") != self.n_steps:
            return None
        try:
            stats = {s: np.asarray(entry[s], dtype=np.float64) for s in STATS}
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        shape = self.features[key].shape
        return stats if all(v.shape == shape and np.isfinite(v).all() for v in stats.values()) else None

    def _compute_stats(self, key: str) -> dict[str, np.ndarray]:
        n_steps = self.n_steps
        if n_steps == 0:
            raise StoreError(f"{self.path}: cannot compute statistics of data/{key}: the store is empty")
        lo = hi = total = total_sq = None
        rows = _block_rows(self._array(f"data/{key}").shape)
        for start in range(0, n_steps, rows):
            x = self._read(key, start, min(n_steps, start + rows)).astype(np.float64)
            lo = x.min(0) if lo is None else np.minimum(lo, x.min(0))
            hi = x.max(0) if hi is None else np.maximum(hi, x.max(0))
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
        mean = total / n_steps
        std = np.sqrt(np.maximum(total_sq / n_steps - mean * mean, 0.0))
        return {"min": lo, "max": hi, "mean": mean, "std": std}

    # --- writing -----------------------------------------------------------------------
    def append_episode(self, episode: Mapping[str, np.ndarray], source: str | None = None) -> None:
        """Append one episode (``{key: (T, ...) array}``) atomically; validates before writing.
        ``source``: where the episode comes from (an imported file's demo), named by its errors
        instead of the store."""
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only; open with mode='a' to append")
        episode = {k: np.asarray(v) for k, v in episode.items()}
        self._check_episode(episode, source or self.path)
        data = self._root["data"]
        if self.n_steps == 0:   # nothing committed: arrays here are an interrupted first append's leftovers
            for key in list(data.array_keys()):
                del data[key]
                self._arrays.pop(f"data/{key}", None)
                self._checked.pop(f"data/{key}", None)
        for key, values in episode.items():
            if key not in data:
                chunk_steps = max(1, min(1024, (1 << 20) // max(1, values[0].nbytes)))
                data.zeros(key, shape=(0, *values.shape[1:]), chunks=(chunk_steps, *values.shape[1:]),
                           dtype=values.dtype)
            array = self._array(f"data/{key}")
            if array.shape[0] != self.n_steps:       # drop an interrupted append's leftovers
                array.resize(self.n_steps, *array.shape[1:])
            array.append(values.astype(array.dtype, copy=False))
        self._commit_ends(np.append(self._ends, self.n_steps + len(next(iter(episode.values())))))
        if self._root.attrs.get("features") != self._feature_json():
            self._root.attrs["features"] = self._feature_json()

    def _feature_json(self) -> dict:
        return {k: spec.to_json() for k, spec in self.features.items()}

    def _check_episode(self, episode: Mapping[str, np.ndarray], where) -> None:
        if not episode:
            raise StoreError(f"{where}: empty episode (no keys)")
        bad = [k for k in episode if not valid_key(k)]
        if bad:
            raise StoreError(f"{where}: {bad[0]!r} cannot be a store key (a key is one file name, data/<key>)"[:300])
        existing = set(self.keys) if self.n_steps else set()   # no episode yet: no schema to match
        if existing and set(episode) != existing:
            missing, extra = sorted(existing - set(episode)), sorted(set(episode) - existing)
            raise StoreError(f"{where}: episode keys do not match the store "
                             f"(missing {missing}, unexpected {extra})")
        lengths = {k: v.shape[0] if v.ndim else 0 for k, v in episode.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise StoreError(f"{where}: every key needs the same, non-zero number of steps, got {lengths}")
        for key, values in episode.items():
            if key in existing:
                spec = self.features[key]
                if tuple(values.shape[1:]) != spec.shape:
                    raise StoreError(f"{where}: data/{key} has per-step shape {spec.shape}, "
                                     f"episode gives {tuple(values.shape[1:])}")
                if not np.can_cast(values.dtype, spec.dtype, casting="same_kind"):
                    raise StoreError(f"{where}: data/{key} holds {spec.dtype}, episode gives {values.dtype} "
                                     f"(convert it explicitly)")
                with np.errstate(over="ignore", invalid="ignore"):       # checked just below
                    stored = values.astype(spec.dtype)
                if np.issubdtype(spec.dtype, np.integer) and not np.array_equal(stored, values):
                    raise StoreError(f"{where}: data/{key} holds {spec.dtype}, and the episode's {values.dtype} values "
                                     f"do not fit it (from {values.min()} to {values.max()}); nothing was written")
            else:
                stored = values
            if np.issubdtype(stored.dtype, np.floating):
                bad = ~(np.abs(stored.reshape(len(stored), -1)) <= MAX_VALUE)      # NaN and inf too
                if bad.any():
                    step = int(np.argwhere(bad)[0, 0])
                    raise StoreError(f"{where}: episode key '{key}' holds NaN or infinite values, or beyond "
                                     f"+-{MAX_VALUE:g} as {stored.dtype} (first at step {step}); nothing was written")

    def _commit_ends(self, new_ends: np.ndarray) -> None:
        """Write the new ``episode_ends`` chunk(s), then the shape that makes them visible."""
        array = self._array(_ENDS)
        old_n, new_n, chunk = array.shape[0], len(new_ends), array.chunks[0]
        for c in range(old_n // chunk, (new_n - 1) // chunk + 1):
            block = np.zeros(chunk, dtype=array.dtype)
            values = new_ends[c * chunk:(c + 1) * chunk]
            block[: len(values)] = values
            for f in array.filters or []:
                block = f.encode(block)
            payload = array.compressor.encode(block) if array.compressor else np.ascontiguousarray(block).tobytes()
            array.store[f"{array.path}/{c}"] = payload
        array.resize(new_n)
        self._ends = new_ends.astype(np.int64)



def _block_rows(shape: tuple[int, ...]) -> int:
    """Rows per block when reading through a key: about 4M elements."""
    return max(1, 2 ** 22 // max(1, math.prod(shape[1:])))
