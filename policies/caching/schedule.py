"""A cache schedule: at which sampling steps each residual branch is recomputed.

``update_steps[key]`` lists the steps (0-based, ascending, always starting at 0) at which the
branch ``key`` (``blocks.<i>.<branch>``) runs; at every other step its residual from the
latest update step is reused. A schedule belongs to one sampling schedule, identified by the
``levels`` the process passes to the network at steps 0, 1, ... (see ``process.levels()``).
Schedules are stored as JSON (never pickled) and validated on load.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from cadence.errors import CadenceError

METHODS = ("bac", "shared", "uniform", "none")
LEVEL_TOLERANCE = 1e-4


class ScheduleError(CadenceError, ValueError):
    """A cache schedule is malformed or does not fit the network or sampler it is used with."""


@dataclass
class CacheSchedule:
    method: str                                  # bac | shared | uniform | none
    levels: list[float]                          # the process's level at each sampling step
    update_steps: dict[str, list[int]]           # branch key -> steps at which it is recomputed
    budget: int                                  # M: updates per branch before the bubbling union
    info: dict = field(default_factory=dict)     # calibration details (objective, volatility, ...)

    def __post_init__(self):
        n = len(self.levels)
        if self.method not in METHODS:
            raise ScheduleError(f"method must be one of {METHODS}, got {self.method!r}")
        if n < 1:
            raise ScheduleError("a cache schedule needs at least one sampling step (levels is empty)")
        if not 1 <= self.budget <= n:
            raise ScheduleError(f"budget (updates per branch) must be in 1..{n}, got {self.budget}")
        for key, steps in self.update_steps.items():
            if not steps or steps[0] != 0:
                raise ScheduleError(f"branch {key!r}: update steps must start at step 0, got {list(steps)[:5]}")
            if any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] >= n:
                raise ScheduleError(f"branch {key!r}: update steps must be strictly increasing within 0..{n - 1}, "
                                    f"got {list(steps)}")

    @property
    def sample_steps(self) -> int:
        return len(self.levels)

    def matches(self, levels: Sequence[float]) -> bool:
        return len(levels) == len(self.levels) and all(
            math.isclose(a, b, rel_tol=0.0, abs_tol=LEVEL_TOLERANCE) for a, b in zip(levels, self.levels))

    def check_branches(self, keys: Sequence[str]) -> None:
        """Raise unless the schedule covers exactly the network's branches ``keys``."""
        missing, unknown = sorted(set(keys) - set(self.update_steps)), sorted(set(self.update_steps) - set(keys))
        if missing or unknown:
            raise ScheduleError(f"the {self.method} schedule for {self.sample_steps} steps does not fit this network: "
                                f"branches missing {missing[:4]}, unknown {unknown[:4]}")

    def branch_evaluations(self) -> int:
        """Residual-branch evaluations per chunk (the uncached sampler runs ``branches x steps``)."""
        return sum(len(s) for s in self.update_steps.values())

    def to_json(self) -> dict:
        return {"method": self.method, "sample_steps": self.sample_steps, "levels": list(self.levels),
                "budget": self.budget, "update_steps": {k: list(v) for k, v in self.update_steps.items()},
                "info": self.info}

    @classmethod
    def from_json(cls, data: Mapping, where: str = "cache schedule") -> "CacheSchedule":
        try:
            levels = [float(v) for v in data["levels"]]
            steps = {str(k): [int(s) for s in v] for k, v in dict(data["update_steps"]).items()}
            schedule = cls(str(data["method"]), levels, steps, int(data["budget"]), dict(data.get("info", {})))
        except KeyError as exc:
            raise ScheduleError(f"{where}: missing key {exc}") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ScheduleError(f"{where}: {exc}") from None
        if "sample_steps" in data and data["sample_steps"] != schedule.sample_steps:
            raise ScheduleError(f"{where}: sample_steps {data['sample_steps']!r} but {schedule.sample_steps} levels"[:300])
        return schedule


def evenly_spaced_steps(num_steps: int, updates: int) -> list[int]:
    """``updates`` steps of ``0..num_steps-1`` at equal intervals, starting at 0 (``k * n // M``)."""
    if not 1 <= updates <= num_steps:
        raise ScheduleError(f"updates per branch must be in 1..{num_steps}, got {updates}")
    return [k * num_steps // updates for k in range(updates)]


def uniform_schedule(keys: Sequence[str], levels: Sequence[float], updates: int) -> CacheSchedule:
    """Uniform-interval caching (FORA-style): every branch recomputed at the same evenly spaced steps."""
    steps = evenly_spaced_steps(len(levels), updates)
    return CacheSchedule("uniform", [float(v) for v in levels], {k: list(steps) for k in keys}, updates)


def no_cache_schedule(keys: Sequence[str], levels: Sequence[float]) -> CacheSchedule:
    """Every branch at every step: the uncached computation."""
    steps = list(range(len(levels)))
    return CacheSchedule("none", [float(v) for v in levels], {k: list(steps) for k in keys}, len(steps))
