"""Import a LeRobot dataset (codebase versions v2.0 / v2.1 and v3.0) into an episode store.

Both versions describe themselves in ``meta/info.json``: ``codebase_version``, ``fps``,
``total_episodes``, ``chunks_size``, ``features`` (``{key: {dtype, shape, names}}``) and the
``data_path`` / ``video_path`` templates.

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

Episodes are imported in ``episode_index`` order, each with exactly its parquet rows. The
store's ``source`` attribute keeps ``info.json``, the tasks (``{task_index: task}``) and every
episode's original index and tasks. The store is written beside its target and moved into
place at the end, so a failed import leaves nothing behind.

The metadata is data from elsewhere, checked before anything is read for it: ``info.json``
(bounded JSON; ``fps`` a positive number; ``total_episodes``, ``total_frames`` and
``chunks_size`` integers within ``LIMITS``; every feature an object with a ``dtype`` and, for
the imported ones, a bounded ``shape``; path templates that use only their own fields, as
``{name}`` or ``{name:0Nd}``, and stay inside the dataset), the episode and task records
(integer indices and lengths within ``LIMITS``, finite timestamps, lists of task strings) and
each episode's ``timestamp`` column (finite, spanning no more than its frames at ``fps``).
A value that does not check out ends the import with a
:class:`~cadence.errors.CadenceError` naming the file, the line or row, and the key.
"""
from __future__ import annotations

import json
import os
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cadence.untrusted import LIMITS, check_int, check_number, check_shape, read_bytes, read_json

from .episode_store import EpisodeStore, StoreError, valid_key
from .staged_store import staged_store
from .video_frames import decode_image, read_video_frames

VERSIONS = ("v2.0", "v2.1", "v3.0")
NUMERIC = {"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64"}
IMPLIED = ("episode_index", "index")       # given by the store's episode boundaries


@dataclass
class _Episode:
    index: int                      # LeRobot's episode_index
    length: int
    tasks: list
    data: Path                      # the parquet file holding its rows
    videos: dict = field(default_factory=dict)   # video key -> (mp4 path, from_timestamp)


def import_lerobot(source: str | os.PathLike, out: str | os.PathLike, fps: float | None = None,
                   videos: bool = True, overwrite: bool = False, progress: bool = True) -> EpisodeStore:
    """Import the LeRobot dataset in directory ``source`` into a new store at ``out``.

    ``fps`` defaults to ``info.json``'s; ``videos=False`` skips the video features.
    """
    root, out = Path(source), Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    info = _read_info(root)
    version = info["codebase_version"]
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
    if version == "v3.0":
        episodes = _episodes_v3(root, info, wanted_videos)
        tasks = _tasks_v3(root)
    else:
        episodes = _episodes_v2(root, info, wanted_videos)
        tasks = _tasks_v2(root)
    tolerance = 0.5 / info["fps"]

    with staged_store(out, float(fps or info["fps"])) as store:
        tmp = store.path
        reader = _ParquetRows(columns=numeric + images + ["episode_index"])
        for ep in tqdm(episodes, desc=f"import {root.name}", disable=not progress):
            rows = reader.episode(ep)
            episode = {key: _numeric(rows[key], features[key], ep, key) for key in numeric}
            for key in images:
                episode[key] = _images(rows[key], ep, key)
            if wanted_videos:
                times = _timestamps(episode["timestamp"], ep, info["fps"])
            for key in wanted_videos:
                path, start = ep.videos[key]
                episode[key] = read_video_frames(path, start + times, tolerance, where=f"episode {ep.index}, key {key}")
            try:
                store.append_episode(episode)
            except StoreError as exc:     # e.g. NaN values: name the source file, not the temporary store
                raise StoreError(f"{ep.data}: episode {ep.index}: {str(exc).removeprefix(f'{tmp}: ')}") from None
        store.set_source({"format": "lerobot", "root": str(root.resolve()), "codebase_version": version,
                          "info": info, "tasks": tasks, "videos": bool(videos), "skipped": skipped,
                          "episodes": [ep.index for ep in episodes],
                          "episode_tasks": [list(ep.tasks) for ep in episodes]})
    return EpisodeStore.open(out)


# --- metadata ---------------------------------------------------------------------------
def _read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not root.is_dir():
        raise StoreError(f"{root}: no such directory (a LeRobot dataset is a directory with meta/info.json)")
    if not path.is_file():
        raise StoreError(f"{path}: missing: {root} is not a LeRobot dataset")
    info = read_json(path)
    if not isinstance(info, dict):
        raise StoreError(f"{path}: expected a JSON object")
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise StoreError(f"{path}: codebase_version {version!r} is not one this importer reads {VERSIONS}")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise StoreError(f"{path}: no '{key}'")
    check_number(path, "fps", info["fps"], low=1e-3)
    for key, low, high in (("total_episodes", 0, LIMITS["episodes"]), ("total_frames", 0, LIMITS["frames"]),
                           ("chunks_size", 1, LIMITS["episodes"])):
        if info.get(key) is not None:
            check_int(path, key, info[key], low, high)
    if not isinstance(info["features"], dict) or not info["features"]:
        raise StoreError(f"{path}: 'features' must be a non-empty object")
    for key, feature in info["features"].items():
        if not isinstance(feature, dict) or not isinstance(feature.get("dtype"), str):
            raise StoreError(f"{path}: 'features.{key}' must be an object with a 'dtype' string")
        if feature["dtype"] in NUMERIC | {"image", "video"}:
            check_shape(path, f"features.{key}.shape", feature.get("shape"))
    return info


def _timestamps(values: np.ndarray, ep: _Episode, fps: float) -> np.ndarray:
    """An episode's ``timestamp`` column (seconds), finite and spanning at most its frames."""
    times = values.reshape(-1).astype(np.float64)
    if not np.isfinite(times).all() or np.ptp(times) > len(times) / fps:
        raise StoreError(f"{ep.data}: key 'timestamp' of episode {ep.index} must be finite seconds spanning at most "
                         f"its {len(times)} frames at {fps} fps, got {times.min()}..{times.max()}")
    return times


def _format(root: Path, template_key: str, info: dict, **fields) -> Path:
    """``root / info[template_key]`` formatted with ``fields``: the template may name only them,
    each as ``{name}`` or ``{name:0Nd}``, and the path must stay inside ``root``."""
    where, template = root / "meta/info.json", info.get(template_key)
    if not isinstance(template, str) or not template:
        raise StoreError(f"{where}: no '{template_key}' template")
    try:
        if not all(name is None or (name in fields and not conversion and re.fullmatch(r"(0[1-9])?d?", spec))
                   for _, name, spec, conversion in string.Formatter().parse(template)):
            raise ValueError("fields may appear only as {name} or {name:0Nd}")
        path = root / template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise StoreError(f"{where}: '{template_key}' {template!r} does not format with {sorted(fields)} "
                         f"({exc})"[:400]) from None
    if not path.resolve().is_relative_to(root.resolve()):
        raise StoreError(f"{where}: '{template_key}' {template!r} leads out of {root}")
    return path


def _jsonl(path: Path) -> list[tuple[str, dict]]:
    """``(where, record)`` for each line of a bounded JSON-lines file; ``where`` names the line."""
    if not path.is_file():
        raise StoreError(f"{path}: missing")
    records = []
    for n, line in enumerate(read_bytes(path, LIMITS["json_bytes"]).splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise StoreError(f"{path}: line {n} is not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise StoreError(f"{path}: line {n} is not a JSON object")
            records.append((f"{path}: line {n}", record))
    return records


def _task_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise StoreError(f"{where}: 'tasks' must be a list of strings, got {value!r}"[:300])
    return value


def _episodes_v2(root: Path, info: dict, video_keys: list[str]) -> list[_Episode]:
    path = root / "meta" / "episodes.jsonl"
    chunks = info.get("chunks_size") or 1000
    episodes = []
    for where, record in _jsonl(path):
        if "episode_index" not in record or "length" not in record:
            raise StoreError(f"{where} lacks 'episode_index' or 'length'")
        index = check_int(where, "episode_index", record["episode_index"], 0, LIMITS["episodes"])
        names = {"episode_chunk": index // chunks, "episode_index": index}
        episodes.append(_Episode(
            index=index, length=check_int(where, "length", record["length"], 0, LIMITS["frames"]),
            tasks=_task_list(record.get("tasks", []), where),
            data=_format(root, "data_path", info, **names),
            videos={k: (_format(root, "video_path", info, video_key=k, **names), 0.0) for k in video_keys}))
    return _checked(sorted(episodes, key=lambda e: e.index), info, path)


def _episodes_v3(root: Path, info: dict, video_keys: list[str]) -> list[_Episode]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise StoreError(f"{root / 'meta' / 'episodes'}: no episode metadata (chunk-*/file-*.parquet)")
    need = ["episode_index", "length", "data/chunk_index", "data/file_index",
            "dataset_from_index", "dataset_to_index"]
    for key in video_keys:
        need += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    episodes = []
    for path in files:
        table = _read_parquet(path, need, "tasks")
        cols = {k: table.column(k).to_pylist() for k in table.column_names}
        for i in range(table.num_rows):
            where = f"{path}: row {i}"

            def number(column: str, high: int = LIMITS["frames"]) -> int:
                return check_int(where, column, cols[column][i], 0, high)

            index, length = number("episode_index", LIMITS["episodes"]), number("length")
            span = number("dataset_to_index") - number("dataset_from_index")
            if span != length:
                raise StoreError(f"{path}: episode {index} has length {length} but dataset_from_index.."
                                 f"dataset_to_index spans {span} rows")
            videos = {}
            for key in video_keys:
                names = {"video_key": key, "chunk_index": number(f"videos/{key}/chunk_index"),
                         "file_index": number(f"videos/{key}/file_index")}
                videos[key] = (_format(root, "video_path", info, **names),
                               check_number(where, f"videos/{key}/from_timestamp",
                                            cols[f"videos/{key}/from_timestamp"][i], low=0))
            episodes.append(_Episode(
                index=index, length=length, tasks=_task_list(cols.get("tasks", [[]] * table.num_rows)[i] or [], where),
                data=_format(root, "data_path", info, chunk_index=number("data/chunk_index"),
                             file_index=number("data/file_index")),
                videos=videos))
    return _checked(sorted(episodes, key=lambda e: e.index), info, root / "meta" / "episodes")


def _checked(episodes: list[_Episode], info: dict, where: Path) -> list[_Episode]:
    if not episodes:
        raise StoreError(f"{where}: lists no episodes")
    dupes = sorted(i for i, n in Counter(e.index for e in episodes).items() if n > 1)
    if dupes:
        raise StoreError(f"{where}: episodes {dupes[:5]} are listed more than once")
    bad = [e.index for e in episodes if e.length <= 0]
    if bad:
        raise StoreError(f"{where}: episodes {bad[:5]} have no frames")
    frames = sum(e.length for e in episodes)
    if frames > LIMITS["frames"]:
        raise StoreError(f"{where}: the episodes hold {frames:,} frames, more than {LIMITS['frames']:,}")
    total = info.get("total_episodes")
    if total is not None and total != len(episodes):
        raise StoreError(f"{where}: lists {len(episodes)} episodes but meta/info.json says "
                         f"total_episodes={total} (an incomplete download?)")
    return episodes


def _tasks_v2(root: Path) -> dict[str, str]:
    path = root / "meta" / "tasks.jsonl"
    tasks = {}
    for where, record in _jsonl(path):
        if "task_index" not in record or "task" not in record:
            raise StoreError(f"{where} lacks 'task_index' or 'task'")
        tasks[str(check_int(where, "task_index", record["task_index"], 0, LIMITS["episodes"]))] = str(record["task"])
    return dict(sorted(tasks.items(), key=lambda kv: int(kv[0])))


def _tasks_v3(root: Path) -> dict[str, str]:
    path = root / "meta" / "tasks.parquet"
    table = _read_parquet(path, ["task_index"], "task", "__index_level_0__")
    name = "task" if "task" in table.column_names else "__index_level_0__"
    if name not in table.column_names:
        raise StoreError(f"{path}: no column 'task' (has {table.column_names})")
    indices = [check_int(path, "task_index", i, 0, LIMITS["episodes"]) for i in table.column("task_index").to_pylist()]
    pairs = zip(indices, table.column(name).to_pylist(), strict=True)
    return {str(i): str(t) for i, t in sorted(pairs, key=lambda p: p[0])}


# --- parquet ----------------------------------------------------------------------------
def _read_parquet(path: Path, need: list[str], *optional: str):
    """The columns ``need`` (each required) and ``optional`` (where present) of ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise StoreError(f"{path}: missing parquet file")
    try:
        names = pq.ParquetFile(path).schema_arrow.names
        missing = [k for k in need if k not in names]
        if missing:
            raise StoreError(f"{path}: no column '{missing[0]}' (missing {missing}; has {names})")
        return pq.read_table(path, columns=list(dict.fromkeys([*need, *(k for k in optional if k in names)])))
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None


class _ParquetRows:
    """An episode's rows, reading each parquet file once (v3.0 files hold many episodes)."""

    def __init__(self, columns: list[str]):
        self.columns = list(dict.fromkeys(columns))
        self._path: Path | None = None
        self._table = None
        self._spans: dict[int, tuple[int, int]] = {}

    def episode(self, ep: _Episode):
        if ep.data != self._path:
            self._table, self._path = _read_parquet(ep.data, self.columns), ep.data
            self._spans = _spans(self._table.column("episode_index"), ep.data)
        if ep.index not in self._spans:
            raise StoreError(f"{ep.data}: holds no rows of episode {ep.index} (episode_index column)")
        start, stop = self._spans[ep.index]
        if stop - start != ep.length:
            raise StoreError(f"{ep.data}: episode {ep.index} has {stop - start} rows but its metadata says "
                             f"length {ep.length}")
        rows = self._table.slice(start, stop - start)
        return {k: rows.column(k) for k in rows.column_names}


def _spans(column, path: Path) -> dict[int, tuple[int, int]]:
    if column.null_count:
        raise StoreError(f"{path}: column 'episode_index' has missing values")
    values = column.to_numpy()
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


def _numeric(column, feature: dict, ep: _Episode, key: str) -> np.ndarray:
    """A (possibly nested) list / fixed-size-list / scalar column as a ``(T, *shape)`` array."""
    import pyarrow as pa

    where = f"{ep.data}: key '{key}' of episode {ep.index}"
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dims = []
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or \
            pa.types.is_fixed_size_list(array.type):
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
    return values


def _images(column, ep: _Episode, key: str) -> np.ndarray:
    import pyarrow as pa

    where = f"{ep.data}: key '{key}' of episode {ep.index}"
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_struct(array.type) and array.type.get_field_index("bytes") >= 0:
        blobs = array.field("bytes").to_pylist()
    elif pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type):
        blobs = array.to_pylist()
    else:
        raise StoreError(f"{where}: expected image bytes (struct<bytes, path>), got {array.type}")
    frames = []
    for step, blob in enumerate(blobs):
        if blob is None:
            raise StoreError(f"{where}: step {step} has no image bytes")
        frames.append(decode_image(blob, f"{where}, step {step}"))
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise StoreError(f"{where}: images of different sizes {sorted(shapes)[:3]}")
    return np.stack(frames)
