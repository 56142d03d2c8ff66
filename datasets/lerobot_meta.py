"""A LeRobot dataset's metadata, read as data from elsewhere (see :mod:`.lerobot_import`).

:func:`read_info` reads and checks ``meta/info.json``; :func:`read_episodes` the episode records
(``meta/episodes.jsonl`` in v2.x, ``meta/episodes/chunk-*/file-*.parquet`` in v3.0), checked
against ``info.json``'s ``total_episodes`` and ``total_frames``, with each episode's parquet file
and mp4 files worked out from the path templates; :func:`select_episodes` keeps those asked for
(``episodes=[...]``); :func:`read_tasks` the task strings. Every refusal is a one-line
:class:`StoreError` naming the file, the line or row, and the key.
"""
from __future__ import annotations

import functools
import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cadence.untrusted import LIMITS, check_int, check_number, check_shape, read_bytes, read_json

from .episode_store import StoreError

VERSIONS = ("v2.0", "v2.1", "v3.0")
NUMERIC = {"bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
           "uint8", "uint16", "uint32", "uint64"}


@dataclass
class Episode:
    index: int                      # LeRobot's episode_index
    length: int
    tasks: list
    data: Path                      # the parquet file holding its rows
    videos: dict = field(default_factory=dict)   # video key -> (mp4 path, from_timestamp)


SUFFIXES = {"data_path": ".parquet", "video_path": ".mp4"}


# --- info.json --------------------------------------------------------------------------
def read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not root.is_dir():
        raise StoreError(f"{root}: no such directory (a LeRobot dataset is a directory with meta/info.json)")
    if not path.is_file():
        raise StoreError(f"{path}: missing: {root} is not a LeRobot dataset")
    _resolved.cache_clear()                 # directories are resolved once per dataset read
    info = read_json(inside_root(root, path, path, "the file"))
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
    timestamp = info["features"].get("timestamp")
    if timestamp is not None and timestamp.get("dtype") in NUMERIC and math.prod(timestamp["shape"]) != 1:
        raise StoreError(f"{path}: 'features.timestamp.shape' must be [1] (one time per frame), got "
                         f"{timestamp['shape']}")
    return info


def _format(root: Path, template_key: str, info: dict, **fields) -> Path:
    """``root / info[template_key]`` formatted with ``fields``: the template may name only them,
    each as ``{name}``, ``{name:Nd}`` or ``{name:0Nd}`` (N up to 99), the path must stay inside ``root``
    and end as its kind does (``.parquet``, ``.mp4``)."""
    where, template = root / "meta/info.json", info.get(template_key)
    if not isinstance(template, str) or not template:
        raise StoreError(f"{where}: no '{template_key}' template")
    try:
        if not all(name is None or (name in fields and not conversion and re.fullmatch(r"(0?[1-9][0-9]?)?d?", spec))
                   for _, name, spec, conversion in string.Formatter().parse(template)):
            raise ValueError("fields may appear only as {name}, {name:Nd} or {name:0Nd}")
        path = root / template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise StoreError(f"{where}: '{template_key}' {template!r} does not format with {sorted(fields)} "
                         f"({exc})"[:400]) from None
    if path.suffix != SUFFIXES[template_key]:
        raise StoreError(f"{where}: '{template_key}' {template!r} must name {SUFFIXES[template_key]} files")
    return inside_root(root, path, where, f"'{template_key}' {template[:100]!r}")


def inside_root(root: Path, path: Path, where, what: str) -> Path:
    """``path``, refused (naming ``what``) when it, or a link on the way, leads out of ``root``;
    each directory is resolved once per :func:`read_info` (an episode list names the same few
    thousand times)."""
    try:
        real = _resolved(path.parent) / path.name
        if path.is_symlink():
            real = path.resolve()
        inside = real.is_relative_to(_resolved(root))
    except (OSError, RuntimeError, ValueError) as exc:     # a loop of links, a NUL, a name too long
        raise StoreError(f"{where}: {what} gives an unusable path ({type(exc).__name__}: {exc})"[:400]) from None
    if not inside:
        raise StoreError(f"{where}: {what} leads out of {root}")
    return path


@functools.lru_cache(maxsize=4096)
def _resolved(path: Path) -> Path:
    return path.resolve()


# --- episodes ---------------------------------------------------------------------------
def episodes_file(root: Path, info: dict) -> Path:
    """Where the episode records are: named in errors about them."""
    return root / "meta" / ("episodes" if info["codebase_version"] == "v3.0" else "episodes.jsonl")


def read_episodes(root: Path, info: dict, video_keys: list[str]) -> list[Episode]:
    """Every episode the metadata lists, in ``episode_index`` order, checked against ``info.json``."""
    read = _episodes_v3 if info["codebase_version"] == "v3.0" else _episodes_v2
    episodes = sorted(read(root, info, video_keys), key=lambda e: e.index)
    return _checked(episodes, info, root)


def select_episodes(episodes: list[Episode], wanted: list[int] | None, where: Path) -> list[Episode]:
    """The episodes whose ``episode_index`` is in ``wanted`` (all when None), in index order."""
    if wanted is None:
        return episodes
    by_index = {e.index: e for e in episodes}
    absent = [i for i in wanted if i not in by_index]
    if absent:
        known = sorted(by_index)
        listed = f"{known[0]}..{known[-1]}" if known == list(range(known[0], known[-1] + 1)) else f"{known[:10]}"
        raise StoreError(f"{where}: has no episode {absent[0]} (episodes={list(wanted)[:10]} asks for it; "
                         f"the dataset's {len(known)} episodes have episode_index {listed})"[:400])
    return [by_index[i] for i in sorted(wanted)]


def _jsonl(root: Path, path: Path, expected: int | None = None) -> list[tuple[str, dict]]:
    """``(where, record)`` for each line of a bounded JSON-lines file inside ``root``; ``where``
    names the line. More lines than ``expected`` are refused before any is parsed."""
    if not path.is_file():
        raise StoreError(f"{path}: missing")
    lines = read_bytes(inside_root(root, path, path, "the file"), LIMITS["json_bytes"]).splitlines()
    _check_count(path, sum(1 for line in lines if line.strip()), expected, "lines")
    records = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise StoreError(f"{path}: line {n} is not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise StoreError(f"{path}: line {n} is not a JSON object")
            records.append((f"{path}: line {n}", record))
    return records


def _check_count(path: Path, count: int, expected: int | None, what: str) -> None:
    """At most ``expected`` (info.json's total_episodes, else ``LIMITS["episodes"]``) records."""
    if expected is None and count > LIMITS["episodes"]:
        raise StoreError(f"{path}: holds {count:,} {what}, more than {LIMITS['episodes']:,}")
    if expected is not None and count > expected:
        raise StoreError(f"{path}: holds {count:,} {what}, more than the {expected:,} episodes meta/info.json "
                         "declares (total_episodes)")


def _task_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise StoreError(f"{where}: 'tasks' must be a list of strings, got {value!r}"[:300])
    return value


def _episodes_v2(root: Path, info: dict, video_keys: list[str]) -> list[Episode]:
    chunks = info.get("chunks_size") or 1000
    episodes = []
    for where, record in _jsonl(root, episodes_file(root, info), info.get("total_episodes")):
        if "episode_index" not in record or "length" not in record:
            raise StoreError(f"{where} lacks 'episode_index' or 'length'")
        index = check_int(where, "episode_index", record["episode_index"], 0, LIMITS["episodes"])
        names = {"episode_chunk": index // chunks, "episode_index": index}
        episodes.append(Episode(
            index=index, length=check_int(where, "length", record["length"], 0, LIMITS["frames"]),
            tasks=_task_list(record.get("tasks", []), where),
            data=_format(root, "data_path", info, **names),
            videos={k: (_format(root, "video_path", info, video_key=k, **names), 0.0) for k in video_keys}))
    return episodes


def _episodes_v3(root: Path, info: dict, video_keys: list[str]) -> list[Episode]:
    files = sorted(episodes_file(root, info).glob("chunk-*/file-*.parquet"))
    if not files:
        raise StoreError(f"{episodes_file(root, info)}: no episode metadata (chunk-*/file-*.parquet)")
    need = ["episode_index", "length", "data/chunk_index", "data/file_index",
            "dataset_from_index", "dataset_to_index"]
    for key in video_keys:
        need += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    rows = 0
    for path in files:
        rows += parquet_rows(inside_root(root, path, path, "the file"))
        _check_count(episodes_file(root, info), rows, info.get("total_episodes"), "episode rows")
    episodes = []
    for path in files:
        table = read_parquet(path, need, "tasks")
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
            episodes.append(Episode(
                index=index, length=length, tasks=_task_list(cols.get("tasks", [[]] * table.num_rows)[i] or [], where),
                data=_format(root, "data_path", info, chunk_index=number("data/chunk_index"),
                             file_index=number("data/file_index")),
                videos=videos))
    return episodes


def _checked(episodes: list[Episode], info: dict, root: Path) -> list[Episode]:
    where = episodes_file(root, info)
    if not episodes:
        raise StoreError(f"{where}: lists no episodes")
    dupes = sorted(i for i, n in Counter(e.index for e in episodes).items() if n > 1)
    if dupes:
        raise StoreError(f"{where}: episodes {dupes[:5]} are listed more than once")
    frames = sum(e.length for e in episodes)
    if frames > LIMITS["frames"]:
        raise StoreError(f"{where}: the episodes hold {frames:,} frames, more than {LIMITS['frames']:,}")
    total = info.get("total_episodes")
    if total is not None and total != len(episodes):
        raise StoreError(f"{where}: lists {len(episodes)} episodes but meta/info.json says "
                         f"total_episodes={total} (an incomplete download?)")
    total = info.get("total_frames")
    if total is not None and total != frames:
        raise StoreError(f"{root / 'meta' / 'info.json'}: total_frames={total} but the {len(episodes)} episodes in "
                         f"{where.relative_to(root)} hold {frames} frames (an incomplete download?)")
    return episodes


# --- tasks ------------------------------------------------------------------------------
def read_tasks(root: Path, info: dict) -> dict[str, str]:
    """``{task_index: task}`` (the index as a string), in index order."""
    return _tasks_v3(root) if info["codebase_version"] == "v3.0" else _tasks_v2(root)


def _tasks_v2(root: Path) -> dict[str, str]:
    path = root / "meta" / "tasks.jsonl"
    tasks = {}
    for where, record in _jsonl(root, path):
        if "task_index" not in record or "task" not in record:
            raise StoreError(f"{where} lacks 'task_index' or 'task'")
        index = str(check_int(where, "task_index", record["task_index"], 0, LIMITS["episodes"]))
        if index in tasks:
            raise StoreError(f"{where}: task_index {index} is listed more than once")
        tasks[index] = str(record["task"])
    return dict(sorted(tasks.items(), key=lambda kv: int(kv[0])))


def _tasks_v3(root: Path) -> dict[str, str]:
    path = inside_root(root, root / "meta" / "tasks.parquet", root / "meta" / "tasks.parquet", "the file")
    table = read_parquet(path, ["task_index"], "task", "__index_level_0__")
    name = "task" if "task" in table.column_names else "__index_level_0__"
    if name not in table.column_names:
        raise StoreError(f"{path}: no column 'task' (has {table.column_names})")
    indices = [check_int(path, "task_index", i, 0, LIMITS["episodes"]) for i in table.column("task_index").to_pylist()]
    twice = sorted(i for i, n in Counter(indices).items() if n > 1)
    if twice:
        raise StoreError(f"{path}: task_index {twice[0]} is listed more than once")
    pairs = zip(indices, table.column(name).to_pylist(), strict=True)
    return {str(i): str(t) for i, t in sorted(pairs, key=lambda p: p[0])}


# --- parquet ----------------------------------------------------------------------------
def parquet_rows(path: Path) -> int:
    """The rows ``path``'s footer declares (nothing else is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise StoreError(f"{path}: missing parquet file")
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None


def read_parquet(path: Path, need: list[str], *optional: str):
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
