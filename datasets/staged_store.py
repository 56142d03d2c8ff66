"""A new episode store built beside its target and swapped in only when complete.

The new store is written at ``<out>.tmp``. On a clean exit the old store (if any) is renamed to
``<out>.old``, the new one to ``out``, and the old one deleted; on an error the new one is
deleted and the old one stays. A process killed at any point leaves a complete store: the old
one at ``out`` until the first rename, the new one at ``out`` after the second, and between
the two (an instant) the old one at ``<out>.old``, which :func:`recover` moves back. Importers
and ``cadence collect overwrite=true`` build their stores this way.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .episode_store import EpisodeStore


def _beside(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def recover(out: Path) -> None:
    """Clean up after an interrupted build or swap at ``out``: the old store back from
    ``<out>.old`` if ``out`` is missing, then no ``<out>.old`` or ``<out>.tmp`` left."""
    old = _beside(out, ".old")
    if old.exists() and not out.exists():
        old.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(_beside(out, ".tmp"), ignore_errors=True)


@contextmanager
def staged_store(out: Path, fps: float) -> Iterator[EpisodeStore]:
    """Yield an empty store at ``<out>.tmp``; on a clean exit it replaces ``out``."""
    recover(out)
    tmp, old = _beside(out, ".tmp"), _beside(out, ".old")
    try:
        yield EpisodeStore.create(tmp, fps=fps)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
