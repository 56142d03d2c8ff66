"""Shared pieces of the benchmarks that put a technique's policy beside the diffusion policy.

``cadence bench anchor`` and ``cadence bench streaming`` train (or load) two policies on the
same data, make one row per sampler setting, time the rows at batch 1 round-robin (machine
noise hits all alike), evaluate each on the same seeds and compare every row with a reference
row: speedup in ms per chunk and success difference.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from cadence.bench.common import trained
from cadence.checkpoint import load_policy
from cadence.deploy.budget import interleaved_ms
from cadence.sim_eval import evaluate_policy, first_observation


@dataclass
class RowSpec:
    policy: str             # which trained policy ("anchor", "diffusion", ...)
    train_cfg: DictConfig
    model: object           # the policy variant this row evaluates
    sampler: str            # label
    calls: int              # denoiser calls per chunk (per replan)
    folder: str             # evaluation output folder name


def load_trained(cfg: DictConfig, out_dir: Path, overrides: dict[str, list], device, progress: bool) -> dict:
    """``overrides``: policy config name -> extra `cadence train` overrides. Trains each (or loads
    ``cfg.<name>_checkpoint``); returns name -> (policy, train config, meta)."""
    common = [f"task={cfg.task.name}", f"train.steps={cfg.steps}", f"train.batch_size={cfg.batch_size}",
              "train.eval_every=0", "eval.episodes=0"]
    if cfg.threads:
        common.append(f"train.threads={cfg.threads}")
    loaded = {}
    for name, extra in overrides.items():
        tcfg = hydra.compose(config_name="train", overrides=[f"policy={name}", *common, *extra,
                                                             f"run_dir={out_dir / name}"])
        ckpt = trained(name, tcfg, cfg.get(f"{name}_checkpoint"), cfg, progress)
        loaded[name] = load_policy(ckpt, device)
    return loaded


def variant(policy, steps: int, **process_attrs):
    """A copy of ``policy`` sampling with ``steps`` calls, other process attributes set as given."""
    out = copy.deepcopy(policy)
    process = policy.process.with_steps(steps)
    for key, value in process_attrs.items():
        setattr(process, key, value)
    out.process = process
    out.eval()
    return out


def measure_rows(specs: list[RowSpec], cfg: DictConfig, out_dir: Path, device, progress: bool) -> list[dict]:
    """ms per chunk (batch 1, median, rows interleaved) and the evaluation of every row."""
    first = specs[0].train_cfg
    obs = first_observation(first.task, first.policy.obs_horizon, cfg.eval.seed, device)
    with torch.no_grad():
        ms = interleaved_ms([s.model for s in specs], obs, cfg.timing_calls)
    rows = []
    for spec, t in zip(specs, ms):
        summary, _ = evaluate_policy(spec.model, spec.train_cfg.task, spec.train_cfg.policy, cfg.eval,
                                     out_dir / f"eval-{spec.folder}", device, progress=progress,
                                     title=f"{spec.policy} {spec.sampler}")
        rows.append({"policy": spec.policy, "sampler": spec.sampler, "denoiser_calls": spec.calls,
                     "ms_per_chunk": round(t, 3), "success": summary["success_rate"],
                     "score": summary.get("mean_max_reward", 0.0), "episodes": summary["n_episodes"],
                     "eval": summary})
    return rows


def compare(rows: list[dict], ref: dict) -> None:
    """Speedup (reference ms / row ms) and success difference of every row against ``ref``."""
    for r in rows:
        r["speedup"] = round(ref["ms_per_chunk"] / r["ms_per_chunk"], 2)
        r["success_vs_ref"] = round(r["success"] - ref["success"], 4)


def result_header(loaded: dict, ref: dict) -> dict:
    """What every such benchmark's results.json starts with: task, reference row, training of each policy."""
    first_cfg = next(iter(loaded.values()))[1]
    return {"task": first_cfg.task.name, "reference": f"{ref['policy']} {ref['sampler']}",
            "train_steps": {name: meta["step"] for name, (_, _, meta) in loaded.items()},
            "train_seconds": {name: meta.get("train_seconds") for name, (_, _, meta) in loaded.items()}}


def footer(result: dict, cfg: DictConfig, unit: str, verdict: str) -> str:
    """The lines under the table: episodes, seeds, how ms were measured, the reference, the target verdict."""
    return (f"Task {result['task']}, {cfg.eval.episodes} episodes per row from seed {cfg.eval.seed}; ms per {unit} at "
            f"batch 1 (median of {cfg.timing_calls}); speedup and 'vs ref' against {result['reference']}."
            + (f"\n\n{verdict}" if verdict else ""))


def mode_text(summary: dict) -> str:
    """Successful episodes per side of the default task; "-" for tasks that report no mode."""
    counts = summary.get("mode_counts", {})
    if summary.get("n_success", 0) and not counts.get("left", 0) + counts.get("right", 0):
        return "-"                      # successes, none of them left or right: the task has no such modes
    return f"{counts.get('left', 0)} / {counts.get('right', 0)}"
