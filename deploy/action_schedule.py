"""Actions stamped with the time they are due, and how consecutive chunks meet at the seam.

A chunk computed from an observation captured at ``t_obs`` holds actions due at
``t_obs + j * period`` (``j = 0`` is the chunk's ``start`` index). Due times live on the
robot's step grid, so each is stored under an integer slot ``round((due - anchor) / period)``
and chunks from different observations line up exactly.

``take(now)`` returns the action for the robot's next step — the slot due in
``[now + lead, now + lead + period)`` — after discarding every slot due earlier: an action
whose time has passed is never executed, and a slot is handed out at most once. A late tick
already sends the next step's action; the on-time tick after it finds that slot taken
(``already_sent``) and must leave the robot's command alone. Blending where chunks overlap:

* ``replace``: the newest chunk wins (with ``freeze``-style inpainting upstream, see
  :mod:`cadence.deploy.control_loop`, the newest chunk already agrees with the committed prefix).
* ``ensemble``: temporal ensembling (ACT): the mean of every prediction for that slot,
  weighted ``exp(-decay * i)`` with ``i = 0`` for the oldest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLENDS = ("replace", "ensemble")


@dataclass(frozen=True)
class DueAction:
    due: float
    value: np.ndarray
    chunk: int          # id of the newest chunk that contributed


class ActionSchedule:
    def __init__(self, period: float, blend: str = "replace", ensemble_decay: float = 0.01, lead: float = 0.0):
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
        if period <= 0:
            raise ValueError(f"period must be > 0, got {period}")
        self.period, self.blend, self.decay, self.lead = period, blend, ensemble_decay, lead
        self.clear()

    def clear(self) -> None:
        self._anchor: float | None = None
        self._slots: dict[int, list[tuple[int, np.ndarray]]] = {}
        self._executed: dict[int, np.ndarray] = {}   # recent slots handed out by take()
        self._last_taken: int | None = None           # newest slot handed out: none at or before it runs again
        self.stale_dropped = 0      # actions whose time passed before they could run

    def _slot(self, due: float) -> int:
        if self._anchor is None:
            self._anchor = due
        return round((due - self._anchor) / self.period)

    def _due(self, slot: int) -> float:
        return self._anchor + slot * self.period

    def merge(self, actions: np.ndarray, first_due: float, chunk: int, now: float) -> int:
        """Add a chunk's actions (N, Da), the first due at ``first_due``. Returns how many were
        already stale on arrival (and dropped)."""
        stale = 0
        for j, value in enumerate(np.asarray(actions, dtype=np.float32)):
            due = first_due + j * self.period
            slot = self._slot(due)
            if self._due(slot) < now + self.lead:
                stale += 1
                continue
            if self._last_taken is not None and slot <= self._last_taken:
                continue                  # already handed out (a late tick ran ahead of the grid)
            if self.blend == "replace" or slot not in self._slots:
                self._slots[slot] = [(chunk, value)]
            else:
                self._slots[slot].append((chunk, value))
        self.stale_dropped += stale
        return stale

    def _expire(self, now: float) -> None:
        for slot in [s for s in self._slots if self._due(s) < now + self.lead - 1e-9]:
            del self._slots[slot]
            self.stale_dropped += 1

    def take(self, now: float) -> DueAction | None:
        """The action for the next robot step, or ``None`` if the schedule has none."""
        if self._anchor is None:
            return None
        self._expire(now)
        slot = self._next_slot(now)
        preds = self._slots.pop(slot, None)
        if preds is None:
            return None
        value = self._blended(preds)
        self._executed[slot] = value
        self._last_taken = slot
        for old in [s for s in self._executed if s < slot - 64]:
            del self._executed[old]
        return DueAction(self._due(slot), value, preds[-1][0])

    def _next_slot(self, now: float) -> int:
        return math.ceil((now + self.lead - self._anchor) / self.period - 1e-9)

    def already_sent(self, now: float) -> bool:
        """Whether the action for the robot's next step was handed out by an earlier (late) call."""
        return self._anchor is not None and self._next_slot(now) in self._executed

    def _blended(self, preds: list[tuple[int, np.ndarray]]) -> np.ndarray:
        if len(preds) == 1:
            return preds[0][1]
        w = np.exp(-self.decay * np.arange(len(preds)))
        return ((w[:, None] * np.stack([v for _, v in preds])).sum(0) / w.sum()).astype(np.float32)

    def remaining(self, now: float) -> int:
        """Slots still to run (due at or after ``now + lead``)."""
        if self._anchor is None:
            return 0
        return sum(1 for s in self._slots if self._due(s) >= now + self.lead - 1e-9)

    def committed(self, first_due: float, n: int) -> np.ndarray | None:
        """What the robot runs at ``first_due + j * period`` for ``j < n`` — the action already
        handed out for a past slot, the scheduled one for a future slot — as far as that is known
        contiguously from ``j = 0`` ((m, Da), m <= n); ``None`` if not even the first is."""
        if self._anchor is None:
            return None
        out = []
        base = round((first_due - self._anchor) / self.period)
        for j in range(n):
            if base + j in self._executed:
                out.append(self._executed[base + j])
            elif base + j in self._slots:
                out.append(self._blended(self._slots[base + j]))
            else:
                break
        return np.stack(out) if out else None
