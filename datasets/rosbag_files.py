"""Finding and opening ROS 2 bags (rosbag2 directories) for :mod:`.rosbag_import`, as data.

A bag is a directory with ``metadata.yaml`` and its storage files (``*.db3`` for SQLite3,
``*.mcap`` for MCAP). The pure-Python ``rosbags`` package reads both; no ROS installation is
involved, and nothing in a bag is imported or executed: messages are deserialised by
``rosbags``' own code for the standard message types of the bag's ROS distribution, never
from the definitions a bag carries.

Before ``rosbags`` sees a bag, ``metadata.yaml`` is read here with a bounded, safe YAML loader
and checked: a mapping ``rosbag2_bagfile_information`` with a known ``storage_identifier``
(``sqlite3`` or ``mcap``), storage files that are plain names inside the bag directory (no link
leading out), and no zstd *file* or *message* compression (those ``rosbags`` would inflate
without a bound: decompress the bag first, e.g. ``ros2 bag convert``). MCAP's own chunk
compression (zstd, lz4: the default of ``ros2 bag record -s mcap``) is read, inflating each
chunk into at most the size its index states, and the chunks held at once (those whose time
ranges overlap) into at most ``LIMITS["chunk_bytes"]`` together. ``metadata.yaml`` may be at most
``METADATA_BYTES``. Any
error ``rosbags`` raises on a corrupt file becomes one :class:`StoreError` line naming the bag.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterator

from cadence.errors import CadenceError
from cadence.untrusted import LIMITS, inside, read_yaml

from .episode_store import StoreError

log = logging.getLogger(__name__)

STORAGES = {"sqlite3": ".db3", "mcap": ".mcap"}
DISTROS = ("foxy", "galactic", "humble", "iron", "jazzy", "kilted", "lyrical")   # rosbags' typestores
DEFAULT_DISTRO = "humble"      # bags that do not name a known distribution (e.g. written by rosbags)
MAX_MESSAGE_BYTES = 4 * LIMITS["obs_elements"] + 2 ** 20   # one serialised message (a max-size RGBA image + header)
METADATA_BYTES = 2 ** 18       # metadata.yaml (a few kB usually; parsing YAML costs seconds per 100 kB of lists)


@dataclass
class Bag:
    """One rosbag2 directory, its checked metadata and the files it names."""
    path: Path
    storage: str                        # sqlite3 | mcap
    files: list[Path]
    distro: str | None                  # as recorded (None when absent)
    topics: dict[str, str] = field(default_factory=dict)   # topic -> message type (filled on open)

    @property
    def where(self) -> str:
        """What errors name: the storage file of a one-file bag, else the bag directory."""
        return str(self.files[0] if len(self.files) == 1 else self.path)


def find_bags(source: str | Path) -> list[Bag]:
    """``source`` as a bag directory (with ``metadata.yaml``) or a folder of bag directories
    (sorted by name), each checked (:func:`read_metadata`)."""
    root = Path(source)
    if not root.is_dir():
        raise StoreError(f"{root}: no such directory (a rosbag2 bag is a directory with metadata.yaml, "
                         f"or give a folder of them)")
    if (root / "metadata.yaml").is_file():
        return [read_metadata(root)]
    bags = sorted((d for d in root.iterdir() if d.is_dir() and (d / "metadata.yaml").is_file()),
                  key=lambda d: d.name)
    if not bags:
        raise StoreError(f"{root}: neither a rosbag2 bag (no metadata.yaml) nor a folder of bags "
                         f"(no subdirectory holds one)")
    if len(bags) > LIMITS["episodes"]:
        raise StoreError(f"{root}: {len(bags):,} bags, more than {LIMITS['episodes']:,}")
    return [read_metadata(d) for d in bags]


def read_metadata(path: Path) -> Bag:
    """The checked ``metadata.yaml`` of the bag directory ``path``."""
    where = path / "metadata.yaml"
    data = read_yaml(where, METADATA_BYTES)
    info = data.get("rosbag2_bagfile_information") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise StoreError(f"{where}: no 'rosbag2_bagfile_information' mapping: not a rosbag2 bag")
    storage = info.get("storage_identifier")
    if storage not in STORAGES:
        raise StoreError(f"{where}: storage_identifier {storage!r} is not one cadence reads {sorted(STORAGES)}"[:300])
    mode = info.get("compression_mode") or ""
    if not isinstance(mode, str) or mode.lower() not in ("", "none"):
        raise StoreError(f"{where}: compression_mode {mode!r}: zstd-compressed bags are not read (cadence does not "
                         f"inflate them without a bound); decompress it first, e.g. with `ros2 bag convert`"[:400])
    names = info.get("relative_file_paths")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise StoreError(f"{where}: 'relative_file_paths' must be a non-empty list of file names")
    if len(names) > 100_000:
        raise StoreError(f"{where}: 'relative_file_paths' names {len(names):,} files")
    files = [inside(path, PurePath(n).name, where, "relative_file_paths") for n in names]   # rosbags reads name only
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StoreError(f"{where}: storage files missing: {missing[:3]}")
    distro = info.get("ros_distro")
    return Bag(path=path, storage=storage, files=files, distro=distro if isinstance(distro, str) else None)


def typestore_name(bag: Bag) -> str:
    """The rosbags typestore for the bag's ROS distribution (``ros2_<distro>``); bags that name
    none or an unknown one (rosbags writes ``rosbags``) get ``ros2_humble``. The message types
    cadence imports are the same in every ROS 2 distribution."""
    distro = (bag.distro or "").lower()
    return f"ros2_{distro if distro in DISTROS else DEFAULT_DISTRO}"


_TYPESTORES: dict[str, Any] = {}


def typestore(name: str):
    """A rosbags typestore (standard message types only) whose sequences are bounded."""
    if name not in _TYPESTORES:
        from rosbags.typesys import Stores, get_typestore

        try:
            which = Stores(name)
        except ValueError:                       # a distribution this rosbags version does not know
            which = Stores(f"ros2_{DEFAULT_DISTRO}")
        store = get_typestore(which)
        store.max_sequence_length = MAX_MESSAGE_BYTES    # rosbags >= 0.11 checks sequence counts against it
        _TYPESTORES[name] = store
    return _TYPESTORES[name]


@contextmanager
def reading(where: str, what: str = "not a readable rosbag2 bag") -> Iterator[None]:
    """Whatever ``rosbags`` (SQLite, MCAP, CDR) raises on a corrupt bag, as one line naming it."""
    try:
        yield
    except CadenceError:
        raise
    except Exception as exc:   # noqa: BLE001  (rosbags, apsw, struct, lz4, zstd: many types for bad bytes)
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise StoreError(f"{where}: {what} ({type(exc).__name__}: {text})") from None


@contextmanager
def open_bag(bag: Bag) -> Iterator[Any]:
    """An open ``rosbags`` reader of ``bag``; fills ``bag.topics`` (one type per topic)."""
    from rosbags.rosbag2 import Reader

    _bound_mcap_chunks()
    with reading(str(bag.path)):
        reader = Reader(bag.path)
        reader.open()
    try:
        with reading(str(bag.path)):
            _check_chunks_held(bag, reader)
            topics: dict[str, set[str]] = {}
            for conn in reader.connections:
                if not (isinstance(conn.topic, str) and isinstance(conn.msgtype, str)):
                    raise StoreError(f"{bag.where}: a topic whose name or type is not a string "
                                     f"({conn.topic!r}: {conn.msgtype!r})"[:300])
                topics.setdefault(conn.topic, set()).add(conn.msgtype)
        several = {t: sorted(types) for t, types in topics.items() if len(types) > 1}
        if several:
            topic, types = next(iter(several.items()))
            raise StoreError(f"{bag.where}: topic {topic} carries more than one message type {types}")
        bag.topics = {t: types.pop() for t, types in topics.items()}
        yield reader
    finally:
        with reading(str(bag.path)):
            reader.close()


def messages(bag: Bag, reader, topics: list[str], start: int | None = None,
             stop: int | None = None) -> Iterator[tuple[str, int, memoryview]]:
    """``(topic, log time ns, serialised message)`` of ``topics`` within ``[start, stop)``,
    in the reader's order; a message larger than ``MAX_MESSAGE_BYTES`` is refused."""
    conns = [c for c in reader.connections if c.topic in topics]
    if not conns:
        return
    with reading(bag.where):
        for conn, time, raw in reader.messages(conns, start=start, stop=stop):
            if not isinstance(raw, (bytes, bytearray, memoryview)) or not isinstance(time, int):
                raise StoreError(f"{bag.where}: topic {conn.topic}: a message stored as {type(raw).__name__} at "
                                 f"{type(time).__name__} {str(time)[:40]}, not bytes at an integer log time")
            if not 0 <= time < 2 ** 63:
                raise StoreError(f"{bag.where}: topic {conn.topic}: a message at log time {time} ns")
            if len(raw) > MAX_MESSAGE_BYTES:
                raise StoreError(f"{bag.where}: topic {conn.topic}: a message of {len(raw):,} bytes at {time} ns, "
                                 f"more than {MAX_MESSAGE_BYTES:,}")
            yield conn.topic, int(time), raw


def digests(reader) -> dict[str, set[str]]:
    """Topic -> the type hashes (RIHS01) the bag records for it (empty before ROS 2 Iron)."""
    found: dict[str, set[str]] = {}
    for conn in reader.connections:
        if isinstance(conn.digest, str) and conn.digest.startswith("RIHS01_"):
            found.setdefault(conn.topic, set()).add(conn.digest)
    return found


def _check_chunks_held(bag: Bag, reader) -> None:
    """MCAP chunks whose time ranges overlap are inflated together: ``rosbags`` merges them in time
    order, each held whole until its last message (a 27 kB file of overlapping chunks took 1.5 GB).
    The bytes held at any time are at most ``LIMITS["chunk_bytes"]``."""
    storages = getattr(reader.storage, "storages", [reader.storage])
    for storage in storages:
        events = []                             # (time, 0 ends / 1 starts, bytes): at equal times ends first
        for chunk in getattr(storage, "chunks", None) or []:
            events += [(chunk.message_start_time, 1, chunk.uncompressed_size),
                       (chunk.message_end_time + 1, 0, chunk.uncompressed_size)]
        held = chunks = 0
        for _, starts, size in sorted(events):
            sign = 1 if starts else -1
            held, chunks = held + sign * size, chunks + sign
            if held > LIMITS["chunk_bytes"] and chunks > 1:     # one chunk alone: refused as it is inflated
                raise StoreError(f"{getattr(storage, 'path', bag.where)}: MCAP chunks overlapping in time hold "
                                 f"{held:,} bytes uncompressed at once, more than {LIMITS['chunk_bytes']:,} "
                                 "(rosbags inflates them together; `ros2 bag convert` rewrites them in order)")


# --- MCAP chunk compression, bounded -----------------------------------------------------
def _zstd_module():
    for name in ("compression.zstd", "backports.zstd"):
        try:
            return __import__(name, fromlist=["ZstdDecompressor"])
        except ImportError:
            continue
    return None


def _bounded_zstd(data: bytes, size: int) -> bytes:
    _check_chunk(size)
    module = _zstd_module()
    if module is not None:
        return module.ZstdDecompressor().decompress(data, max_length=size)
    import zstandard                         # rosbags < 0.11 depends on it
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)


def _bounded_lz4(data: bytes, size: int) -> bytes:
    from lz4.frame import LZ4FrameDecompressor

    _check_chunk(size)
    return LZ4FrameDecompressor().decompress(data, max_length=size)


def _check_chunk(size: int) -> None:
    if not isinstance(size, int) or not 0 <= size <= LIMITS["chunk_bytes"]:
        raise ValueError(f"an MCAP chunk of {size:,} bytes uncompressed, more than {LIMITS['chunk_bytes']:,}")


def _bound_mcap_chunks() -> bool:
    """Make rosbags inflate each compressed MCAP chunk into at most the size its index states
    (rosbags itself inflates a whole chunk, however large, then compares sizes)."""
    from rosbags.rosbag2 import storage_mcap

    table = getattr(storage_mcap, "DECOMPRESSORS", None)
    if not isinstance(table, dict):
        log.warning("rosbags %s: no DECOMPRESSORS table; MCAP chunk decompression is not bounded",
                    getattr(storage_mcap, "__name__", "?"))
        return False
    table.update({"zstd": _bounded_zstd, "lz4": _bounded_lz4})
    return True
