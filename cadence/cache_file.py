"""The block-cache schedule file beside a checkpoint: ``checkpoint/cache_schedule.json``.

Written by ``cadence cache`` (calibrated shared or BAC schedules, or uniform caching) and read by
:func:`cadence.checkpoint.load_policy`, which installs the schedules as the denoiser's block
cache so that evaluation, the runtimes and the control loop use them. JSON only::

    {"format": 1, "weights_sha256": "<sha256 of model.safetensors>", "step": 1500,
     "schedules": [<CacheSchedule.to_json()>, ...]}        # one per number of sampling steps

The weights hash ties the schedules to the weights they were calibrated on: a checkpoint
trained further (which rewrites the folder) or a file copied beside other weights is refused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from cadence.policies.caching import BlockCache, CacheSchedule
from cadence.policies.caching.block_cache import install
from cadence.policies.caching.schedule import ScheduleError
from cadence.untrusted import UntrustedFileError, read_json

SCHEDULE_FILE = "cache_schedule.json"
FORMAT_VERSION = 1


def weights_sha256(ckpt: Path) -> str:
    digest = hashlib.sha256()
    with open(ckpt / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_schedules(ckpt: Path) -> list[CacheSchedule] | None:
    """The schedules stored beside checkpoint folder ``ckpt`` (None when there is no file)."""
    path = ckpt / SCHEDULE_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except UntrustedFileError as exc:
        raise ScheduleError(str(exc)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise ScheduleError(f"{path}: 'format' must be {FORMAT_VERSION}, got {data.get('format') if isinstance(data, dict) else data!r}")
    if data.get("weights_sha256") != weights_sha256(ckpt):
        raise ScheduleError(f"{path}: calibrated for other weights than {ckpt / 'model.safetensors'} (the checkpoint "
                            "changed since); recalibrate with `cadence cache checkpoint=...` or delete the file")
    schedules = data.get("schedules")
    if not isinstance(schedules, list) or not schedules:
        raise ScheduleError(f"{path}: 'schedules' must be a non-empty list")
    return [CacheSchedule.from_json(s, where=f"{path} schedules[{i}]") for i, s in enumerate(schedules)]


def write_schedules(ckpt: Path, schedules: Sequence[CacheSchedule], step: int | None = None) -> Path:
    """Store ``schedules``, keeping those already in the file for other numbers of sampling steps."""
    try:
        kept = read_schedules(ckpt) or []
    except ScheduleError:
        kept = []                                   # stale or broken: replaced
    counts = {s.sample_steps for s in schedules}
    merged = sorted([s for s in kept if s.sample_steps not in counts] + list(schedules), key=lambda s: -s.sample_steps)
    data = {"format": FORMAT_VERSION, "weights_sha256": weights_sha256(ckpt), "step": step,
            "schedules": [s.to_json() for s in merged]}
    path = ckpt / SCHEDULE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    return path


def attach_block_cache(policy, ckpt: Path) -> bool:
    """Install the checkpoint's schedules as the denoiser's block cache; whether there were any."""
    schedules = read_schedules(ckpt)
    if schedules is None:
        return False
    try:
        install(policy.denoiser, BlockCache(schedules))
    except ScheduleError as exc:
        raise ScheduleError(f"{ckpt / SCHEDULE_FILE}: {exc}") from None
    return True
