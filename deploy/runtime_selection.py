"""Pick the runtime a robot runs on: every usable runtime kind x sampling step count measured on
calibration observations, the most accurate one within the latency budget chosen (``budget.py``)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cadence.policies.search import SearchSettings

from . import budget as budget_mod
from .export_spec import read_spec
from .loop_graph import exported_loop_steps
from .runtimes import LOOP_KINDS, REDUCED_KINDS, available_runtime_kinds, build_runtime
from .value_graph import for_runtime

log = logging.getLogger(__name__)


def usable_kinds(requested) -> list[str]:
    """The requested runtime kinds this machine can run (``auto``: all of them)."""
    available = available_runtime_kinds()
    if "auto" in requested:
        return available
    skipped = [k for k in requested if k not in available]
    if skipped:
        log.warning("runtimes %s cannot run here (available: %s); skipping them", skipped, available)
    return [k for k in requested if k in available]


def kinds_for(policy, kinds: list[str]) -> list[str]:
    """``kinds`` less the whole-loop ones (``*-loop``) when the policy's process has no loop graph."""
    if getattr(policy.process, "loop_graph", False):
        return list(kinds)
    return [k for k in kinds if not k.endswith("-loop")]


def with_loop_graphs(candidates: list, loops: list[int]) -> list:
    """``candidates`` less the whole-loop ONNX ones at step counts the export has no graph for."""
    return [c for c in candidates if c.kind not in LOOP_KINDS or c.sample_steps in loops]


def select_runtime(policy, budget_cfg, budget_ms: float, observations: Sequence[dict],
                   export: Callable[[], Path], device: str, threads: int | None = None, progress: bool = True,
                   verifier=None):
    """Measure the candidates and return (chosen runtime, chosen measurement, all measurements).
    ``budget_cfg``: the ``budget`` config group; ``observations``: calibration windows (each key
    (1, To, ...)); ``export()``: the ONNX export folder of these weights, called only when an ONNX
    runtime is a candidate; ``threads``: the CPU threads inference will have in deployment
    (measured under the same); ``verifier``: the search verifier of the candidates with K > 1
    (``budget.candidates``; a name or a callable such as a loaded value verifier)."""
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    noises = [rng.standard_normal((1, policy.pred_horizon, policy.action_dim)).astype(np.float32)
              for _ in observations]
    kinds = kinds_for(policy, usable_kinds(budget_cfg.runtimes))
    export_dir = export() if any(k.startswith("onnx") for k in kinds) else None
    for kind in [k for k in kinds if k in REDUCED_KINDS and REDUCED_KINDS[k] not in read_spec(export_dir)]:
        log.info("%s is not a candidate: %s has no %s denoiser (cadence export %s=true)", kind, export_dir,
                 REDUCED_KINDS[kind], REDUCED_KINDS[kind])
        kinds.remove(kind)
    loops = exported_loop_steps(read_spec(export_dir)) if export_dir is not None else []
    for kind in [k for k in kinds if k in LOOP_KINDS and not loops]:
        log.info("%s is not a candidate: %s has no loop graph (cadence export loop_steps=[...])", kind, export_dir)
        kinds.remove(kind)
    search = [int(k) for k in (getattr(budget_cfg, "candidates", None) or [1])]

    def build(c):
        runtime = build_runtime(c.kind, policy, export_dir, c.sample_steps, device, threads=threads,
                                block_cache=c.cache != "none")
        if c.candidates > 1:
            runtime.policy.search = SearchSettings(c.candidates, "best_of",
                                                   for_runtime(verifier, runtime, export_dir, threads) or "consensus")
        return runtime

    reference = build_runtime("torch-eager", policy, export_dir,
                              budget_mod.reference_steps(policy.process, budget_cfg.reference_steps), device,
                              block_cache=False)
    candidates = budget_mod.candidates(kinds, budget_mod.candidate_steps(policy.process, budget_cfg.steps),
                                       budget_mod.cached_steps(policy), search)
    candidates = with_loop_graphs(candidates, loops)     # a graph per step count
    max_error = budget_cfg.max_action_error * budget_mod.action_range(policy)
    measured = budget_mod.measure(candidates, build, reference, observations, noises, budget_ms,
                                  calls=budget_cfg.calls, warmup=budget_cfg.warmup, progress=progress,
                                  max_error=max_error)
    chosen = budget_mod.choose(measured, budget_ms, tie=budget_mod.SAME_ACCURACY * budget_mod.action_range(policy))
    return build(chosen.candidate), chosen, measured
