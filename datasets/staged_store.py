"""A new episode store written beside its target and moved into place only when complete.

Importers write ``<out>.importing`` and rename it to ``out`` at the end, so a failed or
interrupted import leaves neither a half-written store at ``out`` nor the temporary one.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .episode_store import EpisodeStore


@contextmanager
def staged_store(out: Path, fps: float) -> Iterator[EpisodeStore]:
    """Yield an empty store at ``<out>.importing``; on a clean exit it replaces ``out``."""
    tmp = out.with_name(out.name + ".importing")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield EpisodeStore.create(tmp, fps=fps)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
