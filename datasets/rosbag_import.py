"""Import ROS 2 bags (rosbag2: MCAP or SQLite3 storage) into an episode store, without ROS.

``cadence import format=rosbag source=BAG_OR_FOLDER out=X.zarr fps=10
topics={action: /cmd, state: /joint_states, image: /camera/image_raw/compressed}
[split=bag|TOPIC] [align=last|nearest] [episodes=[...]] [image_size=[H,W]]``.

Bags are read with the pure-Python ``rosbags`` package (:mod:`.rosbag_files`): ``source`` is
one bag directory (with ``metadata.yaml``) or a folder of them, taken in name order.

**Keys.** ``topics`` maps store keys to topics; the key ``action`` is required and holds the
actions. Each topic's messages become arrays as :mod:`.rosbag_messages` describes:

* ``sensor_msgs/msg/JointState`` -> ``key`` = position (N,); ``key.velocity`` and
  ``key.effort`` (N,) when those fields are filled; joint names in ``source["joint_names"]``
  and the same in every message;
* ``geometry_msgs/msg/PoseStamped`` / ``Pose`` -> ``[x, y, z, qx, qy, qz, qw]``;
* ``geometry_msgs/msg/TwistStamped`` / ``Twist`` -> ``[vx, vy, vz, wx, wy, wz]``;
* ``std_msgs/msg/Float64MultiArray`` / ``Float32MultiArray`` -> ``data`` (flat);
  ``std_msgs/msg/Float64`` / ``Float32`` -> ``[data]``;
* ``sensor_msgs/msg/Image`` (``rgb8``, ``bgr8``, ``mono8``, ``rgba8``, ``bgra8``) and
  ``sensor_msgs/msg/CompressedImage`` (JPEG / PNG) -> uint8 RGB (H, W, 3), resized to
  ``image_size=[H, W]`` when given.

Numbers keep the message's float type (float64, float32 for the ``Float32`` types).

Any other type on a named topic is refused, naming the topic, its type and the supported ones.

**Episodes.** ``split=bag`` (default): one episode per bag. ``split=/some/topic``: a marker
topic; every message on it starts an episode, which runs until the next marker or the end of
its bag (an episode never spans two bags; data before a bag's first marker is not imported).
A ``std_msgs/msg/Bool`` marker starts an episode on ``true`` and ends it on ``false``; the
content of other marker types is not read. ``episodes=[i, ...]`` imports only those episodes,
numbered 0, 1, ... in bag order, then time order, and imports them in that order.

**Clock.** Each episode is sampled on a grid at the task rate ``fps`` (required): tick ``k``
is ``start + round(k * 1e9 / fps)`` ns, from ``start``, the latest first message among the
named topics (so every key has a value at the first tick), to the last tick at or before
``end``, the earliest last message among them. Times are the bag's **log times** (when the
recorder received each message), not the ``header.stamp`` inside messages: one clock for
every topic, headers or not. On each tick every topic gives ``align=last``: its last message
at or before the tick (causal: what a robot running at ``fps`` would have seen; the default),
or ``align=nearest``: the message nearest the tick (the earlier one on a tie). Messages at the
same log time on one topic count as one: the last read. An episode in which some named topic
has no message, or whose topics never overlap, has no tick: it is skipped, with a warning,
and listed in ``source["skipped"]`` (asking for it in ``episodes`` is an error).

**Store.** ``fps`` is the store's. ``source`` records ``{"format": "rosbag", "bags", "topics",
"types", "fps", "align", "split", "clock": "log_time", "typestores", "joint_names",
"image_size", "episodes": [{index, bag, start_ns, end_ns, steps}], "skipped"}``. The store is
built beside ``out`` and swapped in when complete (:mod:`.staged_store`).

**Untrusted.** A bag is data from elsewhere. Nothing in it is imported or executed, and the
message definitions it carries are not used: the named topics must have standard types,
deserialised by ``rosbags``' code for the bag's ROS distribution (``ros_distro`` in
``metadata.yaml``; Humble when absent or unknown); a type hash the bag records that differs
from the standard one is refused. ``metadata.yaml`` is bounded YAML, checked before
``rosbags`` opens the bag; one message is at most ``MAX_MESSAGE_BYTES``; per-step sizes are
within ``LIMITS``; floats must be finite; images are checked against their data; an episode
may have at most ``MAX_STEPS_PER_MESSAGE`` ticks per message of its busiest topic (so a
forged time span cannot make the clock allocate without bound). Bags are read twice (times,
then the messages the clock picks), so memory holds the picked messages only. Every refusal
is one :class:`StoreError` line naming the bag file, the topic and, for a message, its time.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from cadence.untrusted import LIMITS, check_int

from .episode_budget import EpisodeBudget, fits_in_memory
from .episode_store import EpisodeStore, StoreError, valid_key
from .image_resize import image_size as checked_image_size
from .rosbag_files import Bag, digests, find_bags, messages, open_bag, reading, typestore, typestore_name
from .rosbag_messages import JOINT_STATE, TopicDecoder, supported_or_refuse
from .staged_store import staged_store

log = logging.getLogger(__name__)

ALIGNS = ("last", "nearest")
MAX_STEPS_PER_MESSAGE = 100      # ticks per message of an episode's busiest topic (upsampling beyond is refused)
FREE_REPEAT_BYTES = 64 * 2 ** 20    # a slow topic's messages may repeat over more ticks while its steps fit this
MAX_FPS = 100_000.0
BOOL = "std_msgs/msg/Bool"
EMPTY = "std_msgs/msg/Empty"


@dataclass
class _Segment:
    """One episode candidate: messages of ``bag`` with log times in ``[start, stop)``."""
    index: int
    bag: Bag
    start: int | None                   # None: from the bag's beginning
    stop: int | None                    # None: to the bag's end
    times: dict[str, np.ndarray]        # topic -> sorted log times (ns) inside the segment
    ticks: np.ndarray | None = None     # the clock (None: no tick, skipped)
    reason: str = ""                    # why there is no tick


def import_rosbag(source: str | os.PathLike, out: str | os.PathLike, topics: Mapping[str, str],
                  fps: float | None, split: str = "bag", align: str = "last",
                  episodes: Sequence[int] | None = None, image_size: Sequence[int] | None = None,
                  overwrite: bool = False, progress: bool = True) -> EpisodeStore:
    """Import the bag(s) at ``source`` into a new store at ``out`` (see the module docstring)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    topics = _check_topics(topics)
    fps = _check_fps(fps)
    if align not in ALIGNS:
        raise StoreError(f"align must be one of {list(ALIGNS)}, got {align!r}")
    if not isinstance(split, str) or not split:
        raise StoreError(f"split must be 'bag' or a marker topic, got {split!r}")
    size = checked_image_size(image_size)
    bags = find_bags(source)

    types: dict[str, str] = {}
    segments: list[_Segment] = []
    for bag in tqdm(bags, desc="scan bags", disable=not progress or len(bags) < 2):
        segments += _scan(bag, topics, split, types, len(segments), fps)
    chosen = _choose(segments, episodes)
    _check_derived_keys(topics, types)

    decoders = {key: TopicDecoder(key, topic, types[topic], size) for key, topic in topics.items()}
    records = []
    with staged_store(out, fps) as store:
        for seg in tqdm(chosen, desc=f"import {Path(source).name}", disable=not progress):
            with fits_in_memory(f"{seg.bag.where}: episode {seg.index}"):
                episode = _episode(seg, decoders, align)
                store.append_episode(episode, source=f"{seg.bag.where}: episode {seg.index}")   # errors name the bag
            records.append({"index": seg.index, "bag": seg.bag.path.name, "start_ns": int(seg.ticks[0]),
                            "end_ns": int(seg.ticks[-1]), "steps": len(seg.ticks)})
        store.set_source({
            "format": "rosbag", "root": str(Path(source).resolve()),
            "bags": [str(b.path.resolve()) for b in bags], "storage": sorted({b.storage for b in bags}),
            "topics": dict(topics), "types": {key: types[topic] for key, topic in topics.items()},
            "fps": fps, "align": align, "split": split, "clock": "log_time",
            "typestores": {b.path.name: typestore_name(b) for b in bags},
            "joint_names": {k: d.joint_names for k, d in decoders.items() if d.joint_names is not None},
            "image_size": list(size) if size else None, "episodes": records,
            "skipped": [{"index": s.index, "bag": s.bag.path.name, "reason": s.reason}
                        for s in segments if s.ticks is None]})
    return EpisodeStore.open(out)


# --- arguments (the user's, trusted, but refused in one line) ------------------------------
def _check_topics(topics: Any) -> dict[str, str]:
    if not isinstance(topics, Mapping) or not topics:
        raise StoreError("topics must map store keys to topics, e.g. "
                         "topics={action: /cmd, state: /joint_states}")
    topics = dict(topics)
    if len(topics) > LIMITS["obs_keys"]:
        raise StoreError(f"topics names {len(topics)} keys, more than {LIMITS['obs_keys']}")
    for key, topic in topics.items():
        if not isinstance(key, str) or not valid_key(key):
            raise StoreError(f"topics: {key!r} cannot be a store key")
        if not isinstance(topic, str) or not topic:
            raise StoreError(f"topics: key '{key}' must name a topic, got {topic!r}")
    if "action" not in topics:
        raise StoreError(f"topics must name the action topic under the key 'action' (e.g. topics={{action: /cmd, "
                         f"...}}); got keys {sorted(topics)}")
    return topics


def _check_fps(fps: Any) -> float:
    if fps is None:
        raise StoreError("format=rosbag needs fps=<Hz>: the task rate at which every topic is sampled")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
            or not 0 < fps <= MAX_FPS:
        raise StoreError(f"fps must be a number in (0, {MAX_FPS:g}], got {fps!r}")
    return float(fps)


def _check_derived_keys(topics: dict[str, str], types: dict[str, str]) -> None:
    for key, topic in topics.items():
        if types[topic] == JOINT_STATE:
            for extra in (f"{key}.velocity", f"{key}.effort"):
                if extra in topics:
                    raise StoreError(f"topics: key '{extra}' collides with the {extra.rsplit('.', 1)[1]} of "
                                     f"joint states '{key}' ({topic})")


def _choose(segments: list[_Segment], episodes: Sequence[int] | None) -> list[_Segment]:
    if episodes is not None:
        if isinstance(episodes, (str, bytes)) or not isinstance(episodes, Sequence):
            raise StoreError(f"episodes must be a list of episode numbers, got {episodes!r}")
        if not segments:
            raise StoreError("episodes: the bags hold no episodes")
        wanted = [check_int("episodes", f"[{i}]", e, 0, len(segments) - 1)
                  for i, e in enumerate(episodes)]
        if len(set(wanted)) != len(wanted):
            raise StoreError(f"episodes lists an episode more than once: {list(episodes)}")
        chosen = [segments[i] for i in sorted(wanted)]
        empty = [s for s in chosen if s.ticks is None]
        if empty:
            raise StoreError(f"{empty[0].bag.where}: episode {empty[0].index} has no step: {empty[0].reason}")
        return chosen
    for seg in segments:
        if seg.ticks is None:
            log.warning("%s: episode %d skipped: %s", seg.bag.where, seg.index, seg.reason)
    chosen = [s for s in segments if s.ticks is not None]
    if not chosen:
        first = segments[0] if segments else None
        raise StoreError("no episode to import: " + (f"{first.bag.where}: episode {first.index}: {first.reason}"
                                                     if first else "the marker topic has no messages"))
    return chosen


# --- pass 1: topics, types and log times ------------------------------------------------
def _scan(bag: Bag, topics: dict[str, str], split: str, types: dict[str, str], first: int,
          fps: float) -> list[_Segment]:
    wanted = list(dict.fromkeys(topics.values()))
    marker = None if split == "bag" else split
    with open_bag(bag) as reader:
        for key, topic in topics.items():
            if topic not in bag.topics:
                raise StoreError(f"{bag.where}: no topic {topic} (key '{key}'); the bag has "
                                 f"{sorted(bag.topics)[:20]}"[:600])
            msgtype = bag.topics[topic]
            supported_or_refuse(msgtype, bag.where, topic)
            if types.setdefault(topic, msgtype) != msgtype:
                raise StoreError(f"{bag.where}: topic {topic} has type {msgtype} here, {types[topic]} in an "
                                 f"earlier bag")
        if marker is not None and marker not in bag.topics:
            raise StoreError(f"{bag.where}: no marker topic {marker} (split={marker}); the bag has "
                             f"{sorted(bag.topics)[:20]}"[:600])
        read_marker = marker is not None and bag.topics[marker] == BOOL
        _check_digests(bag, reader, wanted + ([marker] if read_marker else []))
        times: dict[str, list[int]] = {t: [] for t in wanted}
        marks: list[tuple[int, bool]] = []          # (log time, starts an episode)
        for topic, time, raw in messages(bag, reader, wanted + ([marker] if marker else [])):
            if topic in times:
                times[topic].append(time)
            if topic == marker:
                marks.append((time, _marker_starts(bag, marker, raw, time) if read_marker else True))
    arrays = {t: np.sort(np.asarray(v, dtype=np.int64), kind="stable") for t, v in times.items()}
    if marker is None:
        spans = [(None, None)]
    else:
        spans = _marker_spans(marks)
        if not spans:
            log.warning("%s: no episode starts on marker topic %s", bag.where, marker)
    segments = []
    for i, (start, stop) in enumerate(spans):
        seg = _Segment(first + i, bag, start, stop, {t: _between(v, start, stop) for t, v in arrays.items()})
        seg.ticks, seg.reason = _clock(seg, topics, fps)
        segments.append(seg)
    return segments


def _between(times: np.ndarray, start: int | None, stop: int | None) -> np.ndarray:
    keep = np.ones(len(times), dtype=bool)
    if start is not None:
        keep &= times >= start
    if stop is not None:
        keep &= times < stop
    return times[keep]


def _check_digests(bag: Bag, reader, topics: list[str]) -> None:
    """A type hash the bag records must be the standard type's: cadence deserialises with the
    standard definitions, never with the ones a bag carries."""
    store = typestore(typestore_name(bag))
    recorded = digests(reader)
    for topic in topics:
        msgtype = bag.topics[topic]
        with reading(bag.where, f"topic {topic}: no standard definition of {msgtype}"):
            standard = store.hash_rihs01(msgtype)
        for digest in recorded.get(topic, ()):
            if digest != standard:
                raise StoreError(f"{bag.where}: topic {topic} records a {msgtype} definition (hash {digest[:20]}...) "
                                 f"that is not the standard one ({standard[:20]}...); cadence reads only the "
                                 f"standard message types")


def _marker_starts(bag: Bag, topic: str, raw, time: int) -> bool:
    with reading(f"{bag.where}: topic {topic}, message at {time} ns", f"not a valid {BOOL} message"):
        return bool(typestore(typestore_name(bag)).deserialize_cdr(raw, BOOL).data)


def _marker_spans(marks: list[tuple[int, bool]]) -> list[tuple[int, int | None]]:
    """``[start, stop)`` log-time spans from marker messages: a start opens a span (closing
    the open one), a stop (Bool false) closes it; the last open span runs to the bag's end."""
    spans, open_at = [], None
    for time, starts in sorted(marks, key=lambda m: m[0]):
        if open_at is not None:
            spans.append((open_at, time))
            open_at = None
        if starts:
            open_at = time
    if open_at is not None:
        spans.append((open_at, None))
    return spans


def _clock(seg: _Segment, topics: dict[str, str], fps: float) -> tuple[np.ndarray | None, str]:
    """The episode's ticks (ns), or None and why there are none."""
    empty = [f"{t} (key '{k}')" for k, t in topics.items() if len(seg.times[t]) == 0]
    if empty:
        return None, f"no message on {', '.join(empty)}"
    start = max(int(v[0]) for v in seg.times.values())
    end = min(int(v[-1]) for v in seg.times.values())
    if end < start:
        return None, "its topics do not overlap in time (one ends before another starts)"
    n = int((end - start) * fps // 1e9) + 2           # one more than fits; trimmed below
    busiest = max(int(np.count_nonzero((v >= start) & (v <= end))) for v in seg.times.values())
    if n > MAX_STEPS_PER_MESSAGE * busiest or n > LIMITS["frames"]:
        raise StoreError(f"{seg.bag.where}: episode {seg.index}: fps={fps:g} over {(end - start) / 1e9:.3f} s makes "
                         f"{n - 1:,} steps from at most {busiest:,} messages per topic (more than "
                         f"{MAX_STEPS_PER_MESSAGE} steps per message: check fps and the bag's log times)")
    ticks = start + np.round(np.arange(n) * 1e9 / fps).astype(np.int64)
    return ticks[ticks <= end], ""


def pick(times: np.ndarray, ticks: np.ndarray, align: str) -> np.ndarray:
    """For each tick, the log time of the message ``align`` picks from sorted ``times``
    (every tick is at or after ``times[0]``)."""
    after = np.searchsorted(times, ticks, side="right")        # first message later than the tick
    last = times[after - 1]
    if align == "last":
        return last
    following = times[np.minimum(after, len(times) - 1)]
    return np.where(following - ticks < ticks - last, following, last)


# --- pass 2: the picked messages, decoded -------------------------------------------------
def _episode(seg: _Segment, decoders: dict[str, TopicDecoder], align: str) -> dict[str, np.ndarray]:
    bag = seg.bag
    picked = {d.topic: pick(seg.times[d.topic], seg.ticks, align) for d in decoders.values()}
    needed = {topic: set(times.tolist()) for topic, times in picked.items()}
    raws: dict[str, dict[int, bytes]] = {topic: {} for topic in picked}
    budget = EpisodeBudget(f"{bag.where}: episode {seg.index}")
    with open_bag(bag) as reader:
        for topic, time, raw in messages(bag, reader, list(picked), seg.start, seg.stop):
            if time in needed[topic]:
                if time not in raws[topic]:
                    budget.take(len(raw), f"topic {topic}'s messages")
                raws[topic][time] = bytes(raw)            # the last read of equal times
    store = typestore(typestore_name(bag))
    episode: dict[str, np.ndarray] = {}
    for key, decoder in decoders.items():
        topic = decoder.topic
        values: dict[int, dict[str, np.ndarray]] = {}
        for time in sorted(needed[topic]):
            where = f"{bag.where}: topic {topic}, message at {time} ns"
            if time not in raws[topic]:
                raise StoreError(f"{where}: missing when read again (the bag changed while importing?)")
            with reading(where, f"not a valid {decoder.msgtype} message"):
                msg = store.deserialize_cdr(raws[topic][time], decoder.msgtype)
            values[time] = decoder.decode(msg, where)
            budget.take(sum(v.nbytes for v in values[time].values()), f"topic {topic}, decoded")
        step_bytes = sum(v.nbytes for v in values[int(picked[topic][0])].values())
        total = step_bytes * len(picked[topic])
        if total > max(MAX_STEPS_PER_MESSAGE * step_bytes * len(values), FREE_REPEAT_BYTES):
            raise StoreError(f"{bag.where}: episode {seg.index}, topic {topic}: {len(picked[topic]):,} steps from "
                             f"{len(values):,} messages of {step_bytes:,} bytes make {total:,} bytes (more than "
                             f"{MAX_STEPS_PER_MESSAGE} steps per message: check fps and the bag's log times)")
        budget.take(total, f"topic {topic}, {len(picked[topic]):,} steps")
        for name in values[int(picked[topic][0])]:
            episode[name] = np.stack([values[int(t)][name] for t in picked[topic]])
    for raw_by_time in raws.values():
        raw_by_time.clear()
    return episode
