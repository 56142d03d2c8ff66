"""Inference beside the control ticks: one request at a time, in a background thread.

The tick thread never waits on it: ``submit`` refuses while a request is running and ``poll``
returns a finished result or ``None`` at once. The runtime's tensor work releases the GIL; the
worker limits torch to ``threads`` CPU threads so the ticks keep a core. ``inject_delay_s``
adds a uniformly drawn delay (seeded) to each inference to rehearse a slow computer.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from cadence.hardware.clock import MonotonicClock


@dataclass(frozen=True)
class InferenceRequest:
    obs: Mapping[str, np.ndarray]      # each key (1, To, ...)
    t_obs: float                       # capture time of the newest observation in the window
    chunk: int                         # request id
    prefix: np.ndarray | None = None   # (P, Da) committed actions due from t_obs on
    previous: np.ndarray | None = None  # (P, Da) the current plan from t_obs on (search's coherence verifier)


@dataclass(frozen=True)
class InferenceResult:
    request: InferenceRequest
    actions: np.ndarray | None         # (Tp - start, Da): due at t_obs + j * period
    t_submit: float
    t_done: float
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.t_done - self.t_submit


class InferenceWorker:
    def __init__(self, runtime, start: int, clock=None, inject_delay_s: tuple[float, float] = (0.0, 0.0),
                 seed: int = 0, threads: int | None = 1):
        self.runtime, self.start = runtime, start
        self.clock = clock or MonotonicClock()
        self.delay = inject_delay_s
        self._rng = np.random.default_rng(seed)
        self._threads = threads
        self._requests: queue.Queue = queue.Queue(maxsize=1)
        self._results: queue.Queue = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cadence-inference", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def submit(self, request: InferenceRequest) -> bool:
        if self._busy.is_set():
            return False
        self._busy.set()
        self._requests.put((request, self.clock.now()))
        return True

    def poll(self) -> InferenceResult | None:
        try:
            return self._results.get_nowait()
        except queue.Empty:
            return None

    def wait(self, timeout: float | None = None) -> InferenceResult | None:
        """Block for the next result (start-up and tests; never from a tick)."""
        try:
            return self._results.get(timeout=timeout)
        except queue.Empty:
            return None

    def warm_up(self, obs: Mapping[str, np.ndarray], calls: int = 2, timeout: float = 600.0) -> None:
        """Run ``calls`` untimed inferences on the worker's own thread before the first tick
        (lazy initialisation, ``torch.compile`` and CUDA-graph capture happen per thread)."""
        done = threading.Event()
        self._requests.put(("warm-up", obs, calls, done))
        if not done.wait(timeout):
            raise RuntimeError(f"inference warm-up did not finish within {timeout:g} s")

    def reset_state(self, timeout: float = 30.0) -> None:
        """Clear the runtime's per-episode state (a streaming policy's buffer), on the worker's own
        thread so that it never races an inference; call it between episodes."""
        done = threading.Event()
        self._requests.put(("reset", done))
        if not done.wait(timeout):
            raise RuntimeError(f"the inference worker did not reset within {timeout:g} s")

    def stop(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        if self._threads:
            import torch
            torch.set_num_threads(self._threads)
        while True:
            item = self._requests.get()
            if item is None:
                return
            if isinstance(item[0], str) and item[0] == "reset":
                reset = getattr(self.runtime, "reset", None)
                try:
                    if callable(reset):
                        reset()
                finally:
                    item[1].set()
                continue
            if isinstance(item[0], str) and item[0] == "warm-up":
                _, obs, calls, done = item
                try:
                    for _ in range(calls):
                        self.runtime.predict(obs)
                finally:
                    done.set()
                continue
            request, t_submit = item
            actions, error = None, None
            try:
                prefix = None if request.prefix is None else request.prefix[None]
                extra = {} if request.previous is None else {"previous": request.previous[None]}
                chunk = self.runtime.predict(request.obs, prefix=prefix, **extra)
                actions = np.asarray(chunk[0, self.start:], dtype=np.float32)
                if not np.all(np.isfinite(actions)):
                    actions, error = None, "non-finite actions"
            except Exception as exc:   # a failed inference must not kill the loop: it holds instead
                error = f"{type(exc).__name__}: {exc}"
            low, high = self.delay
            if high > 0:
                self.clock.sleep_until(self.clock.now() + self._rng.uniform(low, high))
            self._results.put(InferenceResult(request, actions, t_submit, self.clock.now(), error))
            self._busy.clear()
