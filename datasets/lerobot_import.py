"""Import a LeRobot dataset (codebase versions v2.0 / v2.1 and v3.0) into an episode store.

``cadence import format=lerobot source=DIR out=X.zarr [episodes=[...]] [videos=false]
[missing_videos=error|skip] [image_size=[H,W]] [fps=F] [overwrite=true]`` calls
:func:`import_lerobot`.

Both versions describe themselves in ``meta/info.json``: ``codebase_version``, ``fps``,
``total_episodes``, ``total_frames``, ``chunks_size``, ``features`` (``{key: {dtype, shape,
names}}``) and the ``data_path`` / ``video_path`` templates.

* v2.x: one parquet file per episode (``data_path`` formatted with ``episode_chunk`` =
  ``episode_index // chunks_size`` and ``episode_index``), one mp4 per episode and camera
  (``video_path``, also with ``video_key``); episodes in ``meta/episodes.jsonl``
  (``episode_index``, ``tasks``, ``length``), tasks in ``meta/tasks.jsonl``.
* v3.0: parquet and mp4 files holding many episodes (``chunk_index`` / ``file_index``);
  episodes in ``meta/episodes/chunk-*/file-*.parquet`` (``episode_index``, ``tasks``,
  ``length``, ``data/chunk_index``, ``data/file_index``, ``dataset_from_index``,
  ``dataset_to_index`` and per video key ``videos/<key>/chunk_index``, ``.../file_index``,
  ``.../from_timestamp``, ``.../to_timestamp``), tasks in ``meta/tasks.parquet``.

Key names: every store key is the LeRobot feature name unchanged (``observation.state``,
``action``, ``observation.images.top``, ...): zarr v2 takes dots in array names and LeRobot
forbids ``/`` in feature names, so each feature is one flat array ``data/<feature name>``.

* Numeric features (float, int, uint, bool) keep their dtype and per-step shape; scalars
  (LeRobot shape ``[1]``) become ``(T, 1)``. ``timestamp``, ``frame_index`` and
  ``task_index`` are kept; ``episode_index`` and ``index`` are not (the store's episode
  boundaries imply them; the original episode indices are in ``source["episodes"]``).
* ``video`` features are decoded from the mp4 files with PyAV, each parquet row getting the
  frame nearest its ``timestamp`` (plus the episode's ``from_timestamp`` in v3.0) within half a
  frame period, as uint8 ``(T, H, W, 3)``; ``videos=False`` leaves them out.
* ``image`` features (PNG / JPEG bytes inside the parquet) are decoded to uint8 ``(T, H, W, 3)``.
* Other features (e.g. ``string``) are skipped and listed in ``source["skipped"]``.

Options:

* ``episodes=[i, ...]``: import only the episodes with these ``episode_index`` values (in
  ``episode_index`` order, whatever the order given); one the metadata does not list is refused,
  naming it and the metadata file. ``source["episodes"]`` lists the original indices imported.
* ``missing_videos="error"`` (default): a missing mp4 of a wanted video key ends the import before
  anything is decoded, naming the file and the episode (and saying that ``missing_videos=skip``
  drops such episodes and ``videos=false`` skips the video features). ``"skip"`` drops every
  episode with a missing mp4 (in v3.0 one missing file drops every episode that points into it),
  logs one warning line listing them and records them in ``source["skipped_episodes"]``
  (``{episode_index: reason}``); all of them missing is refused. Only a *missing* file is
  skipped: a truncated or unreadable one is still an error.
* Episodes of length 0 (a recording stopped at once) are left out with one warning line and
  recorded in ``source["skipped_episodes"]`` too.
* ``image_size=[H, W]``: video and image features are stored at ``(T, H, W, 3)``. Video frames are
  scaled by FFmpeg's swscale as PyAV converts them to RGB (area averaging when shrinking,
  bilinear otherwise, full chroma resolution), so full-size RGB frames are never held; image
  features go through :func:`~cadence.datasets.image_resize.resize_frames`. The two agree to
  about 1.5-2 grey levels on average (chroma subsampling is resolved in a different order).
  ``source["image_size"]`` records the size (None: as recorded).

Episodes are imported in ``episode_index`` order, each with exactly its parquet rows. The
store's ``source`` attribute keeps ``info.json``, the tasks (``{task_index: task}``), every
imported episode's original index and tasks, and the options above. The store is written beside
its target and moved into place at the end, so a failed import leaves nothing behind.

The metadata is data from elsewhere, checked before anything is read for it
(:mod:`.lerobot_meta`): ``info.json`` (bounded JSON; ``fps`` a positive number;
``total_episodes``, ``total_frames`` and ``chunks_size`` integers within ``LIMITS``, and equal
to the number of episodes and the sum of all their lengths; every feature an object with a
``dtype`` and, for the imported ones, a bounded ``shape``; path templates that use only their
own fields, as ``{name}`` or ``{name:0Nd}``, and stay inside the dataset), the episode and task
records (integer indices and lengths within ``LIMITS``, finite timestamps, lists of task
strings) and each episode's ``timestamp`` column (finite, spanning no more than its frames at
``fps``). A value that does not check out ends the import with a
:class:`~cadence.errors.CadenceError` naming the file, the line or row, and the key.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cadence.untrusted import LIMITS, check_int

from .episode_budget import EpisodeBudget, fits_in_memory
from .episode_store import EpisodeStore, StoreError, valid_key
from .image_decode import decode_image
from .image_resize import image_size as checked_size
from .image_resize import resize_frames
from .lerobot_meta import (NUMERIC, Episode, episodes_file, read_episodes, read_info, read_parquet, read_tasks,
                           select_episodes)
from .staged_store import staged_store
from .video_frames import read_video_frames

log = logging.getLogger(__name__)

IMPLIED = ("episode_index", "index")       # given by the store's episode boundaries
MISSING_VIDEOS = ("error", "skip")


def import_lerobot(source: str | os.PathLike, out: str | os.PathLike, fps: float | None = None,
                   videos: bool = True, overwrite: bool = False, progress: bool = True,
                   episodes: list[int] | None = None, missing_videos: str = "error",
                   image_size: list[int] | None = None) -> EpisodeStore:
    """Import the LeRobot dataset in directory ``source`` into a new store at ``out``.

    ``fps`` defaults to ``info.json``'s; ``videos=False`` skips the video features;
    ``episodes`` picks episodes by ``episode_index``; ``missing_videos`` is ``"error"`` or
    ``"skip"``; ``image_size=[H, W]`` resizes video and image features (module docstring).
    """
    root, out = Path(source), Path(out)
    wanted, size = _episode_option(episodes), checked_size(image_size, "image_size")
    if missing_videos not in MISSING_VIDEOS:
        raise StoreError(f"missing_videos must be one of {MISSING_VIDEOS}, got {missing_videos!r}")
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    info = read_info(root)
    features = info["features"]
    numeric = [k for k, f in features.items() if f.get("dtype") in NUMERIC and k not in IMPLIED]
    images = [k for k, f in features.items() if f.get("dtype") == "image"]
    video_keys = [k for k, f in features.items() if f.get("dtype") == "video"]
    skipped = {k: f.get("dtype") for k, f in features.items()
               if k not in IMPLIED and k not in numeric + images + video_keys}
    for key in numeric + images + video_keys:
        if not valid_key(key):
            raise StoreError(f"{root / 'meta/info.json'}: feature name {key!r} cannot be a store key")
    if "timestamp" not in numeric and video_keys and videos:
        raise StoreError(f"{root / 'meta/info.json'}: video features need the 'timestamp' feature")
    wanted_videos = video_keys if videos else []
    chosen = select_episodes(read_episodes(root, info, wanted_videos), wanted, episodes_file(root, info))
    chosen, empty = _with_frames(chosen, episodes_file(root, info))
    chosen, skipped_episodes = _missing_videos(chosen, wanted_videos, missing_videos, root)
    skipped_episodes.update(empty)
    tasks = read_tasks(root, info)

    with staged_store(out, float(fps or info["fps"])) as store:
        reader = _ParquetRows(columns=numeric + images + ["episode_index"])
        for ep in tqdm(chosen, desc=f"import {root.name}", disable=not progress):
            with fits_in_memory(f"{ep.data}: episode {ep.index}"):
                episode = _read_episode(ep, reader.episode(ep), features, numeric, images, wanted_videos,
                                        info["fps"], size)
                store.append_episode(episode, source=f"{ep.data}: episode {ep.index}")   # errors name the file
        store.set_source({"format": "lerobot", "root": str(root.resolve()),
                          "codebase_version": info["codebase_version"], "info": info, "tasks": tasks,
                          "videos": bool(videos), "skipped": skipped,
                          "episodes": [ep.index for ep in chosen],
                          "episode_tasks": [list(ep.tasks) for ep in chosen],
                          "missing_videos": missing_videos, "skipped_episodes": skipped_episodes,
                          "image_size": list(size) if size else None})
    return EpisodeStore.open(out)


def _read_episode(ep: Episode, rows, features: dict, numeric: list[str], images: list[str], videos: list[str],
                  fps: float, size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """One episode's keys, every array taken from the episode's budget before it is decoded."""
    budget = EpisodeBudget(f"{ep.data}: episode {ep.index}")
    episode = {}
    for key in numeric:
        episode[key] = _numeric(rows[key], features[key], ep, key)
        budget.take(episode[key].nbytes, f"key '{key}'")
    for key in images:
        episode[key] = _images(rows[key], ep, key, size, budget)
    if videos:
        times = _timestamps(episode["timestamp"], ep, fps)
    for key in videos:
        path, start = ep.videos[key]
        episode[key] = read_video_frames(path, start + times, 0.5 / fps, where=f"episode {ep.index}, key {key}",
                                         size=size, budget=budget)
    return episode


# --- options ----------------------------------------------------------------------------
def _episode_option(value) -> list[int] | None:
    """``episodes=[...]`` as a list of distinct episode indices (None: every episode)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise StoreError(f"episodes must be a list of episode_index values, got {value!r}"[:300])
    if not value:
        raise StoreError("episodes=[] selects no episode (leave it out to import every episode)")
    if len(value) > LIMITS["episodes"]:
        raise StoreError(f"episodes lists {len(value):,} values, more than {LIMITS['episodes']:,}")
    indices = [check_int("episodes", f"episodes[{i}]", v, 0, LIMITS["episodes"]) for i, v in enumerate(value)]
    twice = sorted(i for i, n in Counter(indices).items() if n > 1)
    if twice:
        raise StoreError(f"episodes lists episode {twice[0]} more than once")
    return indices


def _with_frames(episodes: list[Episode], where: Path) -> tuple[list[Episode], dict[str, str]]:
    """The episodes that have frames, and ``{episode_index: reason}`` of those without (a recording
    stopped at once): they are left out with one warning, a store episode needs a step."""
    empty = [ep.index for ep in episodes if ep.length == 0]
    if not empty:
        return episodes, {}
    kept = [ep for ep in episodes if ep.length > 0]
    if not kept:
        raise StoreError(f"{where}: the selected episodes {empty[:5]} have no frames: nothing to import")
    log.warning("%s: skipping %d episode(s) with no frames (length 0): episode_index %s", where, len(empty),
                empty[:50])
    return kept, {str(i): "no frames (length 0)" for i in empty}


def _missing_videos(episodes: list[Episode], video_keys: list[str], policy: str,
                    root: Path) -> tuple[list[Episode], dict[str, str]]:
    """The episodes to import and ``{episode_index: reason}`` of those dropped for a missing mp4."""
    exists: dict[Path, bool] = {}
    missing: dict[int, tuple[Path, str]] = {}
    for ep in episodes:
        for key in video_keys:
            path = ep.videos[key][0]
            if path not in exists:
                exists[path] = path.is_file()
            if not exists[path]:
                missing[ep.index] = (path, key)
                break
    if not missing:
        return episodes, {}
    (index, (path, key)), more = next(iter(missing.items())), len(missing) - 1
    if policy == "error":
        also = f"; {more} more episode(s) lack a video too" if more else ""
        raise StoreError(f"{path}: missing video file (episode {index}, key {key}{also}); missing_videos=skip "
                         f"drops the episodes whose video is missing, videos=false skips the video features")
    kept = [ep for ep in episodes if ep.index not in missing]
    if not kept:
        raise StoreError(f"{path}: missing video file (episode {index}, key {key}) and every other selected "
                         f"episode lacks a video too: nothing left to import (videos=false skips the video features)")
    log.warning("%s: skipping %d of %d episodes whose video file is missing (missing_videos=skip): episode_index %s",
                root, len(missing), len(episodes), sorted(missing)[:50])
    return kept, {str(i): f"missing video file {p} (key {k})" for i, (p, k) in missing.items()}


# --- parquet rows -----------------------------------------------------------------------
def _timestamps(values: np.ndarray, ep: Episode, fps: float) -> np.ndarray:
    """An episode's ``timestamp`` column (seconds), finite and spanning at most its frames."""
    times = values.reshape(-1).astype(np.float64)
    if not np.isfinite(times).all() or np.ptp(times) > len(times) / fps:
        raise StoreError(f"{ep.data}: key 'timestamp' of episode {ep.index} must be finite seconds spanning at most "
                         f"its {len(times)} frames at {fps} fps, got {times.min()}..{times.max()}")
    return times


class _ParquetRows:
    """An episode's rows, reading each parquet file once (v3.0 files hold many episodes)."""

    def __init__(self, columns: list[str]):
        self.columns = list(dict.fromkeys(columns))
        self._path: Path | None = None
        self._table = None
        self._spans: dict[int, tuple[int, int]] = {}

    def episode(self, ep: Episode):
        if ep.data != self._path:
            self._table, self._path = read_parquet(ep.data, self.columns), ep.data
            self._spans = _spans(self._table.column("episode_index"), ep.data)
        if ep.index not in self._spans:
            raise StoreError(f"{ep.data}: holds no rows of episode {ep.index} (episode_index column)")
        start, stop = self._spans[ep.index]
        if stop - start != ep.length:
            raise StoreError(f"{ep.data}: episode {ep.index} has {stop - start} rows but its metadata says "
                             f"length {ep.length}")
        rows = self._table.slice(start, stop - start)
        return {k: rows.column(k) for k in rows.column_names}


def _episode_indices(column, path: Path) -> np.ndarray:
    """The ``episode_index`` column as integers: integer or integral float values, or lists of one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise StoreError(f"{path}: column 'episode_index' has missing values")
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
        flat = pc.list_flatten(column)
        if len(flat) != len(column) or flat.null_count:
            raise StoreError(f"{path}: column 'episode_index' holds lists of other than one index per row")
        column = flat
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise StoreError(f"{path}: column 'episode_index' holds {column.type}, not integers")
    values = np.asarray(column.to_numpy())
    if values.dtype.kind == "f":
        if not (np.isfinite(values).all() and (values == np.floor(values)).all() and (np.abs(values) < 2 ** 53).all()):
            raise StoreError(f"{path}: column 'episode_index' holds values that are not whole numbers")
        values = values.astype(np.int64)
    return values


def _spans(column, path: Path) -> dict[int, tuple[int, int]]:
    values = _episode_indices(column, path)
    if len(values) == 0:
        return {}
    starts = np.flatnonzero(np.diff(values)) + 1
    bounds = np.concatenate([[0], starts, [len(values)]])
    spans = {}
    for a, b in pairwise(bounds):
        index = int(values[a])
        if index in spans:
            raise StoreError(f"{path}: the rows of episode {index} are not contiguous")
        spans[index] = (int(a), int(b))
    return spans


def _numeric(column, feature: dict, ep: Episode, key: str) -> np.ndarray:
    """A (possibly nested) list / fixed-size-list / scalar column as a ``(T, *shape)`` array."""
    import pyarrow as pa

    where = f"{ep.data}: key '{key}' of episode {ep.index}"
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dims = []
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or \
            pa.types.is_fixed_size_list(array.type):
        if len(dims) == LIMITS["dims"]:
            raise StoreError(f"{where}: lists nested more than {LIMITS['dims']} deep")
        if array.null_count:
            raise StoreError(f"{where}: has missing values")
        if pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
        else:
            lengths = np.unique(array.value_lengths().to_numpy(zero_copy_only=False))
            if len(lengths) != 1:
                raise StoreError(f"{where}: rows have different lengths {lengths.tolist()[:5]}")
            size = int(lengths[0])
        dims.append(size)
        array = array.flatten()
    if array.null_count:
        raise StoreError(f"{where}: has missing values")
    try:
        values = array.to_numpy(zero_copy_only=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise StoreError(f"{where}: is not numeric ({array.type}: {exc})") from None
    if values.dtype == object or not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        raise StoreError(f"{where}: is not numeric ({array.type})")
    values = values.reshape(len(column), *dims)
    if values.ndim == 1:
        values = values[:, None]
    shape = tuple(feature["shape"])
    if values.shape[1:] != shape and int(np.prod(values.shape[1:])) == int(np.prod(shape)):
        values = values.reshape(len(values), *shape)      # e.g. a flat list for a declared (H, W)
    if values.shape[1:] != shape:
        raise StoreError(f"{where}: per-step shape {values.shape[1:]} but meta/info.json declares {shape}")
    declared = np.dtype(feature["dtype"])       # every episode stored as declared (writers vary it per file)
    if values.dtype != declared:
        with np.errstate(over="ignore", invalid="ignore"):     # floats out of range: refused when appended
            cast = values.astype(declared)
        if declared.kind in "biu" and not np.array_equal(cast, values):
            raise StoreError(f"{where}: its {values.dtype} values do not fit the {declared} meta/info.json declares")
        values = cast
    return values


def _images(column, ep: Episode, key: str, size: tuple[int, int] | None, budget: EpisodeBudget) -> np.ndarray:
    """Image bytes decoded to ``(T, H, W, 3)`` uint8, each resized to ``size`` as it is decoded; the
    episode's frames are taken from ``budget`` once the first gives their size."""
    import pyarrow as pa

    where = f"{ep.data}: key '{key}' of episode {ep.index}"
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(array.type) and array.type.get_field_index("bytes") >= 0:
        array = array.field("bytes")
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise StoreError(f"{where}: expected image bytes (struct<bytes: binary, path>), got {column.type}")
    frames = None
    for step in range(len(array)):
        blob = array[step].as_py()
        if blob is None:
            raise StoreError(f"{where}: step {step} has no image bytes")
        image = resize_frames(decode_image(blob, f"{where}, step {step}")[None], size)[0]
        if frames is None:
            budget.take(len(array) * image.nbytes, f"key '{key}'")
            frames = np.empty((len(array), *image.shape), np.uint8)
        elif image.shape != frames.shape[1:]:
            raise StoreError(f"{where}: images of different sizes {sorted({image.shape, frames.shape[1:]})}")
        frames[step] = image
    if frames is None:
        raise StoreError(f"{where}: no images")
    return frames
