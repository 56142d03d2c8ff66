"""The one thing every policy returns: a chunk of future actions and where "now" is in it."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActionChunk:
    """``actions`` (B, Tp, Da) in the task's units. ``start`` is the index of the action due at
    the current step (``To - 1`` for chunks aligned with the observation window, as trained)."""

    actions: torch.Tensor
    start: int

    def executable(self, n: int) -> torch.Tensor:
        """The next ``n`` actions to execute, (B, n, Da)."""
        if n < 1 or self.start + n > self.actions.shape[1]:
            raise ValueError(f"cannot execute {n} actions from index {self.start} of a chunk of "
                             f"{self.actions.shape[1]}")
        return self.actions[:, self.start: self.start + n]
