"""``cadence bench cache``: block-wise adaptive caching (BAC) against uniform caching and no cache.

One run, one trained transformer policy (DDPM, 100 training steps; trained here or loaded),
the same observations and evaluation seeds for every row. For each sampler in ``samplers``
(DDPM-100 = 100 DDIM steps on the full timestep grid, i.e. the DDPM chain; 10 = DDIM-10) and
each budget M in its ``budgets`` list, the rows are:

- ``none``: the uncached sampler (the baseline of every ratio);
- ``uniform``: every branch recomputed at the same M evenly spaced steps (FORA-style);
- ``shared``: M steps chosen by the dynamic program on the branches' mean similarity, the
  same for every branch -- as many branch evaluations as ``uniform``;
- ``bac (acs only)``: each branch's own M steps from the exact dynamic program, no Bubbling
  Union -- as many branch evaluations as ``uniform`` (the ablation);
- ``bac``: the dynamic program plus the Bubbling Union (``bubbling_blocks`` most volatile
  branches also refresh with downstream feed-forwards), BAC as published; more evaluations;
- ``uniform (= bac cost)``: uniform caching given as many branch evaluations as ``bac``.

Per row: residual-branch evaluations per chunk, denoiser FLOPs per chunk (PyTorch's FLOP
counter at batch 1, so skipped branches cost nothing), batch-1 milliseconds per chunk
(median over ``timing_calls`` rounds, the rows interleaved within each round so that machine
noise hits all alike), speedup over ``none``, mean absolute action error against ``none``
(task units, same start noise) on ``error_observations`` windows of the training data that
are not the calibration windows, and success and score (mean largest reward; PushT's paper
metric) on the evaluation seeds. BAC is calibrated on
``calibration`` other windows. ``results.json`` and ``results.md`` go to ``out_dir``.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from cadence.bench.common import trained
from cadence.calibration_data import stack_observations
from cadence.checkpoint import load_policy
from cadence.deploy.budget import interleaved_ms
from cadence.calibration_data import calibration_observations
from cadence.device import resolve_device
from cadence.sim_eval import evaluate_policy, first_observation
from cadence.markdown_table import markdown_table
from cadence.policies.caching import BlockCache, CacheSchedule, uniform_schedule
from cadence.policies.caching.block_cache import branch_keys, install
from cadence.policies.caching.schedule import ScheduleError
from cadence.policies.caching.calibration import bac_schedule, branch_statistics, shared_schedule
from cadence.policies.flops import count_flops, denoiser_flops

log = logging.getLogger(__name__)

COLUMNS = ("sampler", "cache", "M", "branch evals", "MFLOPs / chunk", "ms / chunk", "speedup", "action error",
           "success", "score")


def train_config(cfg: DictConfig, out_dir: Path) -> DictConfig:
    overrides = ["policy=transformer", "policy.process=ddpm", "policy.name=transformer-ddpm",
                 "policy.diffusion_steps=100", f"task={cfg.task.name}", f"train.steps={cfg.steps}",
                 f"train.batch_size={cfg.batch_size}", "train.eval_every=0", "eval.episodes=0",
                 f"run_dir={out_dir / 'policy'}", *cfg.overrides]
    if cfg.threads:
        overrides.append(f"train.threads={cfg.threads}")
    return hydra.compose(config_name="train", overrides=overrides)


def sampler_label(steps: int, train_steps: int) -> str:
    return f"DDPM-{steps}" if steps == train_steps else f"DDIM-{steps}"


def row_schedules(policy, steps: int, budgets: list[int], observations: dict, cfg: DictConfig) -> list[tuple]:
    """(cache label, M, schedule or None) for one sampler: none, then per M the five cached rows."""
    keys = policy.denoiser.branch_keys()
    sampler = cached_policy(policy, steps, None)
    levels = sampler.process.levels()
    stats = branch_statistics(sampler, observations, cfg.metric, cfg.batch_size_calibration, cfg.seed)
    rows = [("none", steps, None)]
    for m in budgets:
        plain, full = bac_schedule(stats, m, bubbling_blocks=0), bac_schedule(stats, m, cfg.bubbling_blocks)
        matched = max(m, min(steps, round(full.branch_evaluations() / len(keys))))
        rows += [("uniform", m, uniform_schedule(keys, levels, m)), ("shared", m, shared_schedule(stats, m)),
                 ("bac (acs only)", m, plain), ("bac", m, full),
                 ("uniform (= bac cost)", matched, uniform_schedule(keys, levels, matched))]
    return rows


def cached_policy(policy, steps: int, schedule: CacheSchedule | None):
    private = copy.deepcopy(policy)
    private.process = policy.process.with_steps(steps)
    install(private.denoiser, None if schedule is None else BlockCache(schedule))
    return private.eval()


def action_error(policy, reference: torch.Tensor, obs: dict, noise: torch.Tensor) -> float:
    return float((policy.predict_chunk(obs, noise=noise).actions - reference).abs().mean())


def table(rows: list[dict]) -> str:
    cells = [[r["sampler"], r["cache"], str(r["M"]), f"{r['branch_evaluations']} ({r['branch_fraction']:.2f})",
              f"{r['flops_per_chunk'] / 1e6:.1f}", f"{r['ms_per_chunk']:.1f}", f"{r['speedup']:.2f}x",
              f"{r['action_error']:.4f}", f"{r['success']:.2f}", f"{r['score']:.3f}"] for r in rows]
    return markdown_table(COLUMNS, cells)


def run(cfg: DictConfig, progress: bool = True) -> dict:
    if len(cfg.samplers) != len(cfg.budgets):
        raise ScheduleError(f"budgets needs one list of M per sampler {list(cfg.samplers)}, got {list(cfg.budgets)}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    tcfg = train_config(cfg, out_dir)
    ckpt = trained("transformer-ddpm", tcfg, cfg.checkpoint, cfg, progress)
    base, train_cfg, meta = load_policy(ckpt, device, block_cache=False)
    branches = len(branch_keys(base.denoiser))       # refuses a UNet checkpoint by name
    train_steps = base.process.reference_steps()      # the full DDPM chain
    calib = stack_observations(calibration_observations(train_cfg, cfg.calibration, seed=cfg.seed), device)
    held_out = stack_observations(calibration_observations(train_cfg, cfg.error_observations, seed=cfg.seed + 1),
                                  device)
    noise = torch.randn(cfg.error_observations, base.pred_horizon, base.action_dim,
                        generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    obs1 = first_observation(train_cfg.task, train_cfg.policy.obs_horizon, cfg.eval.seed, device)
    rows = []
    for steps, budgets in zip(cfg.samplers, cfg.budgets):
        steps, budgets = int(steps), [int(m) for m in budgets]
        label = sampler_label(steps, train_steps)
        log.info("%s: calibrating BAC on %d observations, budgets %s", label, cfg.calibration, budgets)
        specs = row_schedules(base, steps, budgets, calib, cfg)
        policies = [cached_policy(base, steps, s) for _, _, s in specs]
        with torch.no_grad():
            ms = interleaved_ms(policies, obs1, cfg.timing_calls)
            reference = policies[0].predict_chunk(held_out, noise=noise).actions
        for (cache, m, schedule), policy, t in zip(specs, policies, ms):
            evals = schedule.branch_evaluations() if schedule is not None else branches * steps
            with torch.no_grad():
                flops = denoiser_flops(policy.denoiser, count_flops(lambda: policy.predict_chunk(obs1)))["total"]
                error = action_error(policy, reference, held_out, noise)
            summary, _ = evaluate_policy(policy, train_cfg.task, train_cfg.policy, cfg.eval, None, device,
                                         progress=progress, title=f"{label} {cache} M={m}")
            rows.append({"sampler": label, "sample_steps": steps, "cache": cache, "M": m,
                         "branch_evaluations": evals, "branch_fraction": evals / (branches * steps),
                         "flops_per_chunk": flops, "ms_per_chunk": round(t, 3), "speedup": ms[0] / t,
                         "action_error": error, "success": summary["success_rate"],
                         "score": summary.get("mean_max_reward", summary["success_rate"]),
                         "episodes": summary["n_episodes"], "mode_shares": summary.get("mode_shares", {}),
                         "update_steps": None if schedule is None else schedule.update_steps,
                         "bubbled": None if schedule is None else schedule.info.get("bubbled")})
            log.info("%s %s M=%d: %.1f ms, error %.4f, success %.2f", label, cache, m, t, error,
                     summary["success_rate"])
    result = {"task": train_cfg.task.name, "checkpoint": str(ckpt), "train_steps": meta["step"],
              "train_seconds": meta.get("train_seconds"), "torch_threads": torch.get_num_threads(),
              "calibration": cfg.calibration, "error_observations": cfg.error_observations,
              "bubbling_blocks": cfg.bubbling_blocks, "metric": cfg.metric, "branches": branches, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    text = table(rows)
    (out_dir / "results.md").write_text(text + "\n")
    print("\n" + text + f"\n\nresults: {out_dir / 'results.json'}")
    return result
