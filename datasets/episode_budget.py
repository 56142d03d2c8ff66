"""The memory an importer holds for one episode of a dataset from elsewhere, bounded.

Each check of a file bounds one thing (a frame, a message, a chunk); an episode is many of
them, and a few kilobytes of repeated or highly compressed frames can decode to gigabytes. The
importers take every array of an episode (raw messages kept, decoded frames, the stacked
result) from an :class:`EpisodeBudget` *before* allocating it, and the episode is refused once
the total passes ``LIMITS["episode_bytes"]``; :func:`fits_in_memory` makes a machine with less
free memory than that refuse the episode in one line too.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from cadence.untrusted import LIMITS

from .episode_store import StoreError


class EpisodeBudget:
    """Bytes taken for one episode; ``where`` names the file and episode in the refusal."""

    def __init__(self, where: str, limit: int | None = None):
        self.where, self.used = where, 0
        self.limit = LIMITS["episode_bytes"] if limit is None else limit

    def take(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` more for ``what`` (``"key 'image'"``), refusing past the limit."""
        self.used += int(nbytes)
        if self.used > self.limit:
            raise StoreError(f"{self.where}: {what} brings the episode to {self.used:,} bytes as decoded, more than "
                             f"the {self.limit:,} an imported episode may hold (image_size=[H,W] stores smaller "
                             "frames)")


@contextmanager
def fits_in_memory(where: str) -> Iterator[None]:
    """An episode within the budget that this machine still cannot hold: one line naming it."""
    try:
        yield
    except MemoryError:
        raise StoreError(f"{where}: does not fit in this machine's free memory (image_size=[H,W] stores smaller "
                         "frames; episodes=[...] imports fewer)") from None
