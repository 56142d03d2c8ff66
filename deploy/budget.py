"""Choose the inference configuration at start-up: the most accurate one that fits the budget.

Each candidate (a runtime kind and a number of sampling steps: the process's ``budget_steps``
it can sample with, plus its own setting) is built, warmed up and timed
on calibration observations at batch 1; its accuracy is the mean absolute action error, in
task units, against the full-quality reference configuration on the same observations with
the same start noise (a stateful policy is reset first, so each comparison starts an episode).
Block-cached (BAC) candidates are the PyTorch runtimes at each step
count the checkpoint has a cache schedule for. The chosen candidate is the most accurate one
whose p99 latency is within the budget and whose action error is finite and within the limit
(``budget.max_action_error`` of the action range); candidates as accurate as it to within
``tie`` (``select_runtime``: :data:`SAME_ACCURACY` of the action range: the same steps on
runtimes that compute the same thing) count as equal, and of them the one searching the most
candidates (``budget.candidates``: K chunks per inference, one kept by a verifier; a searching
configuration shares its K = 1 twin's action error), then the fastest, is taken. A candidate
that fails to run is refused. If none qualifies, :class:`BudgetError` says what each
one measured.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from cadence.errors import CadenceError


class BudgetError(CadenceError, RuntimeError):
    """No candidate configuration meets the latency budget."""


@dataclass(frozen=True)
class Candidate:
    kind: str            # a runtime kind, see cadence.deploy.runtimes
    sample_steps: int
    cache: str = "none"  # none, or the block cache's method (bac / shared / uniform) at these steps
    candidates: int = 1  # K chunks per inference, one kept by the search's verifier (policies/search.py)

    @property
    def label(self) -> str:
        return (f"{self.kind}/{self.sample_steps} steps" + ("" if self.cache == "none" else f" + {self.cache}")
                + ("" if self.candidates == 1 else f" x{self.candidates}"))

    @property
    def single(self) -> "Candidate":
        """The same configuration without search (K = 1): whose action error this one shares."""
        return Candidate(self.kind, self.sample_steps, self.cache)


def cached_steps(policy) -> dict[int, str]:
    """Sampling step counts the policy's block cache has schedules for -> their method."""
    cache = getattr(getattr(policy, "denoiser", None), "branch_cache", None)
    return {s.sample_steps: s.method for s in getattr(cache, "schedules", [])}


def candidate_steps(process, steps: list | None) -> list[int]:
    """Sampling steps to try, most first: the given ones, or the process's ``budget_steps`` plus
    its own setting; only counts it can sample with (``process.check_steps``)."""
    chosen = {int(s) for s in steps} if steps else {*process.budget_steps, int(process.sample_steps)}
    return sorted((s for s in chosen if process.allows_steps(s)), reverse=True)


def reference_steps(process, steps: int | None) -> int:
    """The setting the budget's action error is measured against: ``steps``, or the process's own."""
    return int(steps) if steps else int(process.reference_steps())


def candidates(kinds: Sequence[str], steps: Sequence[int], cached: Mapping[int, str] | None = None,
               search: Sequence[int] = (1,)) -> list[Candidate]:
    """Every kind at every step count, uncached; plus, for the PyTorch kinds, every step count with
    a block-cache schedule (``cached``: steps -> method) with its cache; then each of those again
    with every K > 1 in ``search`` (inference-time search), after all the K = 1 ones."""
    out = [Candidate(k, s) for k in kinds for s in steps]
    out += [Candidate(k, s, m) for k in kinds if k.startswith("torch-") for s, m in sorted((cached or {}).items())]
    return out + [Candidate(c.kind, c.sample_steps, c.cache, int(k)) for k in sorted(set(search)) if k > 1 for c in out]


@dataclass
class Measurement:
    candidate: Candidate
    p50_ms: float
    p99_ms: float
    action_error: float   # mean |a - a_reference|, task units
    fits: bool           # p99 within the budget and the action error finite and within the limit
    times_ms: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    failure: str | None = None   # why a candidate was refused other than for time (error, exception)

    def to_json(self) -> dict:
        return {"kind": self.candidate.kind, "sample_steps": self.candidate.sample_steps,
                "cache": self.candidate.cache, "candidates": self.candidate.candidates, "p50_ms": _json_number(self.p50_ms),
                "p99_ms": _json_number(self.p99_ms), "action_error": _json_number(self.action_error),
                "fits": self.fits, "failure": self.failure}


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None     # strict JSON has no NaN / Infinity


def time_calls(fn: Callable[[int], object], calls: int, warmup: int) -> np.ndarray:
    """Milliseconds of ``fn(i)`` for ``calls`` timed calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        fn(i)
    out = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def interleaved_ms(policies: list, obs: dict, rounds: int, warmup: int = 2) -> list[float]:
    """Median batch-1 ms per ``predict_chunk(obs)`` of each policy, timed round-robin (call it under
    ``torch.no_grad()``): machine noise hits every policy alike."""
    times = [[] for _ in policies]
    for r in range(warmup + rounds):
        for i, p in enumerate(policies):
            start = time.perf_counter()
            p.predict_chunk(obs)
            if r >= warmup:
                times[i].append((time.perf_counter() - start) * 1e3)
    return [float(np.median(t)) for t in times]


def measure(candidates: Sequence[Candidate], build: Callable[[Candidate], object], reference,
            observations: Sequence[Mapping[str, np.ndarray]], noises: Sequence[np.ndarray],
            budget_ms: float, calls: int = 20, warmup: int = 3, progress: bool = True,
            max_error: float = math.inf) -> list[Measurement]:
    """``observations[i]`` each key (1, To, ...); ``noises[i]`` (1, Tp, Da). A candidate fits when
    its p99 is within ``budget_ms`` and its action error is finite and at most ``max_error``;
    one that fails to build or to run is measured as never fitting (``failure`` says why). A
    searching candidate (K > 1) keeps another noise's chunk by design: it is timed, and its
    accuracy is its K = 1 configuration's (the reference is unchanged), measured earlier in the list."""
    n = len(observations)

    def fresh(runtime, i):              # a stateful policy (streaming) compared from the same start
        reset = getattr(runtime, "reset", None)
        if callable(reset):
            reset()
        return runtime.predict(observations[i], noise=noises[i])

    targets = [fresh(reference, i) for i in range(n)]
    if not all(np.isfinite(t).all() for t in targets):
        raise BudgetError("the reference configuration's actions are not finite: the policy is broken "
                          "(NaN or infinite weights or normalizer?)")
    out: list[Measurement] = []
    for cand in tqdm(candidates, desc="timing inference configurations", disable=not progress):
        try:
            single = None if cand.candidates == 1 else next((m for m in out if m.candidate == cand.single), None)
            if cand.candidates > 1 and (single is None or not math.isfinite(single.action_error)):
                raise BudgetError(f"its K = 1 configuration {cand.single.label} was not measured or failed")
            runtime = build(cand)
            ms = time_calls(lambda i, rt=runtime: rt.predict(observations[i % n], noise=noises[i % n]), calls, warmup)
            if single is not None:
                error = single.action_error
            else:
                with np.errstate(all="ignore"):
                    error = float(np.mean([np.abs(fresh(runtime, i) - targets[i]).mean() for i in range(n)]))
        except Exception as exc:          # noqa: BLE001 (a candidate that cannot run is refused, not fatal)
            out.append(Measurement(cand, math.inf, math.inf, math.inf, False,
                                   failure=" ".join(f"{type(exc).__name__}: {exc}".split())[:200]))
            continue
        p99 = float(np.percentile(ms, 99))
        accurate = math.isfinite(error) and error <= max_error
        failure = None if accurate else f"action error {error:.4g} above the limit {max_error:.4g}"
        out.append(Measurement(cand, float(np.percentile(ms, 50)), p99, error, p99 <= budget_ms and accurate, ms,
                               failure))
    return out


def action_range(policy) -> float:
    """The mean span of the policy's actions in task units: what its normaliser maps to [-1, 1]
    (limits mode: the data's min..max; gaussian: two standard deviations)."""
    scale, _ = policy.normalizer.params(policy.action_key)
    return float((2.0 / scale.abs().double()).mean())


SAME_ACCURACY = 1e-3    # action errors closer than this fraction of the action range are equal


def choose(measurements: Sequence[Measurement], budget_ms: float, tie: float = 0.0) -> Measurement:
    fitting = [m for m in measurements if m.p99_ms <= budget_ms and m.failure is None]
    if not fitting:
        lines = "\n".join(f"  {m.candidate.label:<28} p99 {m.p99_ms:8.1f} ms"
                          + (f"  refused: {m.failure}" if m.failure else "") for m in measurements)
        raise BudgetError(f"no inference configuration fits the budget of {budget_ms:g} ms per inference "
                          f"(p99 measured after warm-up) with an accurate action:\n{lines}\nRaise "
                          f"budget.inference_ms, lower the control rate, or add cheaper candidates (budget.steps, "
                          f"budget.runtimes).")
    best = min(m.action_error for m in fitting)
    return min((m for m in fitting if m.action_error <= best + tie),
               key=lambda m: (-m.candidate.candidates, m.p99_ms, m.action_error))


def format_table(measurements: Sequence[Measurement], chosen: Measurement | None = None) -> str:
    rows = [f"{'configuration':<30} {'p50 ms':>8} {'p99 ms':>8} {'error':>9}  fits"]
    for m in measurements:
        mark = "  <- chosen" if chosen is not None and m is chosen else ""
        rows.append(f"{m.candidate.label:<30} {m.p50_ms:8.2f} {m.p99_ms:8.2f} {m.action_error:9.4f}  "
                    f"{'yes' if m.fits else 'no'}{mark}" + (f"  ({m.failure})" if m.failure else ""))
    return "\n".join(rows)
