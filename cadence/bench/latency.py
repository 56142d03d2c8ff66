"""``cadence bench latency checkpoints=[RUN, ...]``: inference latency of every configuration.

For each checkpoint x available runtime x sampling-step count: p50 / p99 ms per chunk at
batch 1 (after warm-up, on calibration observations), ms per control tick (the chunk's cost
spread over the ``exec_horizon`` ticks it serves), denoiser calls, speedup against DDPM with
100 steps in PyTorch eager, and the mean action error against the policy's own full-quality
configuration (same observations, same start noise). Writes ``latency.json``, prints the
table and saves ``latency_histogram.png``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from cadence.checkpoint import CheckpointError, load_policy, resolve_checkpoint_dir
from cadence.deploy.budget import cached_steps, candidate_steps, candidates, measure, reference_steps
from cadence.calibration_data import calibration_observations
from cadence.deploy.loop_export import export_loop
from cadence.deploy.loop_graph import loop_step_counts
from cadence.deploy.onnx_export import ExportError, export_policy_onnx
from cadence.deploy.reduced_precision import export_reduced
from cadence.deploy.runtimes import LOOP_KINDS, REDUCED_KINDS, build_runtime
from cadence.device import resolve_device
from cadence.deploy.runtime_selection import kinds_for, usable_kinds, with_loop_graphs

log = logging.getLogger(__name__)


def _rows_for(ckpt: Path, cfg: DictConfig, out: Path, device: str) -> list[dict]:
    policy, train_cfg, meta = load_policy(ckpt, device)
    name = f"{train_cfg.policy.name} ({ckpt.parent.name})"
    kinds = kinds_for(policy, usable_kinds(cfg.runtimes))
    export_dir = out / f"onnx-{ckpt.parent.name}"
    if any(k.startswith("onnx") for k in kinds):
        export_policy_onnx(policy, export_dir, source=str(ckpt), obs_shapes=meta["obs_shapes"])
    observations = calibration_observations(train_cfg, cfg.calibration)
    steps = candidate_steps(policy.process, cfg.steps)
    ref_steps = reference_steps(policy.process, None)
    if train_cfg.policy.process == "ddpm" and ref_steps not in steps:
        steps = [ref_steps, *steps]
    for precision in sorted({REDUCED_KINDS[k] for k in kinds if k in REDUCED_KINDS}):
        try:                            # fitted on other windows than the ones timed
            export_reduced(policy, export_dir, precision, calibration_observations(train_cfg, cfg.calibration, seed=1),
                           steps=steps)
        except ExportError as exc:      # a process it is not offered for (streaming)
            log.warning("no %s rows for %s: %s", precision, name, exc)
            kinds = [k for k in kinds if REDUCED_KINDS.get(k) != precision]
    loops = loop_step_counts(steps) if any(k in LOOP_KINDS for k in kinds) else []
    if loops:
        export_loop(policy, export_dir, loops, echo=None)
    rng = np.random.default_rng(0)
    noises = [rng.standard_normal((1, policy.pred_horizon, policy.action_dim)).astype(np.float32) for _ in observations]
    threads = cfg.threads or None
    reference = build_runtime("torch-eager", policy, export_dir, ref_steps, device, block_cache=False)
    cands = with_loop_graphs(candidates(kinds, steps, cached_steps(policy)), loops)
    build = lambda c: build_runtime(c.kind, policy, export_dir, c.sample_steps, device, threads=threads,  # noqa: E731
                                    block_cache=c.cache != "none")
    measured = measure(cands, build, reference, observations, noises, float("inf"), cfg.calls, cfg.warmup)
    exec_horizon = int(train_cfg.policy.exec_horizon)
    rows = [{"policy": name, "process": train_cfg.policy.process, "runtime": m.candidate.kind,
             "cache": m.candidate.cache, "steps": m.candidate.sample_steps, "denoiser_calls": m.candidate.sample_steps,
             "ms_per_chunk_p50": m.p50_ms, "ms_per_chunk_p99": m.p99_ms,
             "ms_per_tick_p50": m.p50_ms / exec_horizon, "ms_per_tick_p99": m.p99_ms / exec_horizon,
             "action_error": m.action_error, "reference": f"torch-eager/{ref_steps} steps",
             "times_ms": m.times_ms.tolist()} for m in measured]
    return rows


def plot_histogram(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    data = [r["times_ms"] for r in rows]
    ax.boxplot(data, vert=False, whis=(1, 99), showfliers=True)
    ax.set_yticks(range(1, len(rows) + 1), [f"{r['policy']} {r['runtime']} {r['steps']}" for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ms per chunk (batch 1; box: quartiles, whiskers: p1-p99)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(rows: list[dict]) -> str:
    head = (f"{'policy':<28} {'runtime':<24} {'steps':>5} {'p50 ms':>8} {'p99 ms':>8} {'ms/tick':>8} "
            f"{'calls':>5} {'speedup':>8} {'error':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        runtime = r["runtime"] + ("" if r.get("cache", "none") == "none" else f" + {r['cache']}")
        lines.append(f"{r['policy'][:28]:<28} {runtime:<24} {r['steps']:>5} {r['ms_per_chunk_p50']:8.2f} "
                     f"{r['ms_per_chunk_p99']:8.2f} {r['ms_per_tick_p50']:8.2f} {r['denoiser_calls']:>5} "
                     f"{r['speedup_vs_ddpm100_eager']:8.1f} {r['action_error']:8.4f}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict:
    if not cfg.checkpoints:
        raise CheckpointError("pass checkpoints=[RUN_DIR, ...] (runs from `cadence train` or `cadence demo`)")
    device = str(resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in cfg.checkpoints:
        rows += _rows_for(resolve_checkpoint_dir(path), cfg, out, device)
    baseline = next((r for r in rows if r["process"] == "ddpm" and r["runtime"] == "torch-eager" and r["steps"] == 100
                     and r["cache"] == "none"),
                    None)
    if baseline is None:
        log.warning("no DDPM checkpoint measured at 100 steps in torch-eager: speedups are against the first row")
        baseline = rows[0]
    for r in rows:
        r["speedup_vs_ddpm100_eager"] = baseline["ms_per_chunk_p50"] / r["ms_per_chunk_p50"]
    plot_histogram(rows, out / "latency_histogram.png")
    report = {"device": device, "torch_threads": torch.get_num_threads(),
              "baseline": f"{baseline['policy']} {baseline['runtime']} {baseline['steps']} steps", "rows": rows}
    (out / "latency.json").write_text(json.dumps(report, indent=2))
    print(format_table(rows))
    print(f"-> {out / 'latency.json'}, {out / 'latency_histogram.png'}")
    return report
