"""The last ``To`` observations the policy conditions on, padded at the start of an episode."""
from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np

from cadence.hardware.robot import Observation


class ObservationHistory:
    def __init__(self, horizon: int, keys: Sequence[str]):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon, self.keys = horizon, list(keys)
        self._items: deque[Observation] = deque(maxlen=horizon)

    def clear(self) -> None:
        self._items.clear()

    def push(self, obs: Observation) -> bool:
        """Keep ``obs`` if it is new (another ``seq``); returns whether it was kept."""
        if self._items and self._items[-1].seq == obs.seq:
            return False
        missing = [k for k in self.keys if k not in obs.values]
        if missing:
            raise KeyError(f"observation lacks the policy's keys {missing} (has {sorted(obs.values)})")
        self._items.append(obs)
        return True

    @property
    def latest(self) -> Observation | None:
        return self._items[-1] if self._items else None

    def window(self) -> dict[str, np.ndarray]:
        """Each key as (1, To, ...), the oldest observation repeated to fill a short history."""
        if not self._items:
            raise RuntimeError("no observation yet")
        items = [self._items[0]] * (self.horizon - len(self._items)) + list(self._items)
        return {k: np.stack([np.asarray(o.values[k]) for o in items])[None] for k in self.keys}
