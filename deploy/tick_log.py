"""Per-tick timing records and their summary (p50 / p99 latency, jitter, misses)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Tick:
    episode: int
    k: int                    # tick index within the episode
    t_sched: float            # when the tick was due
    t_start: float            # when it ran
    t_end: float
    source: str               # "chunk" | "hold" (no valid action) | "wait" (first chunk pending) | "done"
                              # | "sent" (a late tick before it already sent this step's action)
    chunk: int = -1           # chunk the executed action came from
    due: float = float("nan")  # due time of the executed action
    inference_ms: float = float("nan")   # latency of a chunk that arrived at this tick
    action: list | None = None           # the action sent
    applied: list | None = None          # what the robot applied (after the safety filter and its own clipping)


class TickLog:
    def __init__(self):
        self.ticks: list[Tick] = []
        self.events: dict[str, int] = {}
        self.first_errors: dict[str, str] = {}    # event -> the first occurrence's message

    def add(self, tick: Tick) -> None:
        self.ticks.append(tick)

    def count(self, event: str, n: int = 1, detail: str | None = None) -> None:
        self.events[event] = self.events.get(event, 0) + n
        if detail is not None:
            self.first_errors.setdefault(event, detail)

    def summary(self, budget_ms: float | None = None, period: float | None = None) -> dict:
        ticks = [t for t in self.ticks if t.source != "done"]
        waits = sum(t.source == "wait" for t in ticks)
        jitter = np.array([(t.t_start - t.t_sched) * 1e3 for t in ticks]) if ticks else np.zeros(1)
        work = np.array([(t.t_end - t.t_start) * 1e3 for t in ticks]) if ticks else np.zeros(1)
        inf = np.array([t.inference_ms for t in self.ticks if np.isfinite(t.inference_ms)])
        pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
        out = {
            "ticks": len(ticks),
            "jitter_ms": {"p50": pct(jitter, 50), "p99": pct(jitter, 99), "max": float(jitter.max())},
            "tick_work_ms": {"p50": pct(work, 50), "p99": pct(work, 99), "max": float(work.max())},
            "inference_ms": {"n": int(len(inf)), "p50": pct(inf, 50), "p99": pct(inf, 99),
                             "max": float(inf.max()) if len(inf) else float("nan")},
            "hold_ticks": sum(t.source == "hold" for t in ticks),
            "wait_ticks": waits,
            # an action whose send to the robot completed after it was due (network, a stalled tick)
            "late_sends": sum(t.source == "chunk" and t.t_end > t.due for t in ticks),
            **self.events,
        }
        if period is not None:
            out["tick_overruns"] = int(sum(t.t_end - t.t_sched > period for t in ticks))
        if budget_ms is not None:
            out["inference_over_budget"] = int((inf > budget_ms).sum())
        # a failed inference is a chunk that never came: a missed deadline even while the robot waits
        out["deadline_misses"] = (out["hold_ticks"] + out.get("tick_overruns", 0) + out.get("skipped_ticks", 0)
                                  + out.get("inference_errors", 0))
        if self.first_errors:
            out["first_errors"] = dict(self.first_errors)
        out.update(self._seams(ticks))
        return out

    @staticmethod
    def _seams(ticks: list[Tick]) -> dict:
        """Mean action change between consecutive executed ticks, at chunk seams and inside chunks."""
        seam, inside = [], []
        for a, b in zip(ticks, ticks[1:]):
            if a.source == b.source == "chunk" and a.episode == b.episode and b.k == a.k + 1:
                jump = float(np.abs(np.subtract(b.action, a.action)).max())
                (seam if a.chunk != b.chunk else inside).append(jump)
        mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
        return {"action_change_at_seams": mean(seam), "action_change_inside_chunks": mean(inside), "seams": len(seam)}

    def write(self, path: str | Path) -> None:
        with open(path, "w") as f:
            for t in self.ticks:
                f.write(json.dumps(asdict(t)) + "\n")
