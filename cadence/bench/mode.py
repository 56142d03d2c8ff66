"""``cadence bench mode``: a dense transformer against MoDE, uncached and with expert caching.

One run, one task, the same demonstrations and evaluation seeds. Two policies are trained (or
loaded): the MoDE transformer (``experts`` SwiGLU experts of hidden ``ffn_mult * d_model``,
``top_k`` routed per noise level) and a dense transformer of equal total parameters (one
feed-forward of hidden ``experts * ffn_mult * d_model``); everything else is shared. Three
rows: dense, MoDE uncached, MoDE cached (the routed experts fused into one layer per step).

Per row: denoiser parameters and the parameters one call reads (active), FLOPs of one
denoiser call and of one chunk (observation encoder + every sampling step), counted with
PyTorch's FLOP counter at batch 1; milliseconds per call and per chunk at batch 1 (median);
success rate on the evaluation seeds. Beside it, the experts each layer routes to at every
sampling step (``expert_usage``), and how far the cached actions move from the uncached ones.
``results.json`` and ``results.md`` are written to ``out_dir``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from cadence.bench.common import trained
from cadence.checkpoint import load_policy
from cadence.deploy.budget import time_calls
from cadence.device import resolve_device
from cadence.sim_eval import evaluate_policy, first_observation
from cadence.markdown_table import markdown_table
from cadence.policies.flops import active_parameters, count_flops, denoiser_flops

log = logging.getLogger(__name__)

COLUMNS = ("policy", "params", "active params", "MFLOPs / call", "MFLOPs / chunk", "ms / call", "ms / chunk",
           "success", "episodes")


def train_configs(cfg: DictConfig, out_dir: Path) -> dict[str, DictConfig]:
    """The `cadence train` configs of the MoDE policy and of its dense twin of equal total parameters."""
    common = [f"task={cfg.task.name}", f"train.steps={cfg.steps}", f"train.batch_size={cfg.batch_size}",
              "train.eval_every=0", "eval.episodes=0", *cfg.overrides]
    if cfg.threads:
        common.append(f"train.threads={cfg.threads}")
    mode = hydra.compose(config_name="train", overrides=[
        "policy=mode", *common, f"policy.transformer.num_experts={cfg.experts}", f"policy.transformer.top_k={cfg.top_k}",
        f"run_dir={out_dir / 'mode'}"])
    dense_mult = cfg.experts * mode.policy.transformer.ffn_mult
    dense = hydra.compose(config_name="train", overrides=[
        "policy=transformer", *common, f"policy.transformer.ffn_mult={dense_mult}", f"run_dir={out_dir / 'dense'}"])
    return {"dense": dense, "mode": mode}


def call_cost(policy, obs: dict, calls: int) -> dict:
    """FLOPs and median ms of one denoiser call (at the middle sampling step) and of one chunk, batch 1."""
    net, process = policy.denoiser, policy.process
    policy.prepare_sampling()
    with torch.no_grad():
        cond = policy.encoder(obs, policy.normalizer)
    x = torch.randn(1, policy.pred_horizon, policy.action_dim, device=cond.device)
    step = process.sample_steps // 2
    level = torch.full((1,), process.levels()[step], device=cond.device)
    with torch.no_grad():
        one_call = lambda _=None: net(x, level, cond, step=step)  # noqa: E731
        per_call = denoiser_flops(net, count_flops(one_call))
        per_chunk = count_flops(lambda: policy.predict_chunk(obs))
        call_ms = float(np.median(time_calls(one_call, calls, 3)))
        chunk_ms = float(np.median(time_calls(lambda _: policy.predict_chunk(obs), calls, 3)))
    return {"flops_per_call": per_call["total"], "flops_per_call_by_component": per_call,
            "flops_per_chunk": per_chunk.get("Global", 0), "ms_per_call": round(call_ms, 3),
            "ms_per_chunk": round(chunk_ms, 3), "sample_steps": process.sample_steps}


def bench_row(name: str, policy, train_cfg, cfg: DictConfig, out_dir: Path, device, cached: bool, progress: bool
              ) -> dict:
    policy.eval()
    policy.denoiser.expert_cache = cached
    obs = first_observation(train_cfg.task, train_cfg.policy.obs_horizon, cfg.eval.seed, device)
    row = {"policy": name, "params": sum(p.numel() for p in policy.denoiser.parameters()),
           "active_params": active_parameters(policy.denoiser, cached=cached and policy.denoiser.num_experts > 0),
           **call_cost(policy, obs, cfg.timing_calls)}
    started = time.perf_counter()
    summary, _ = evaluate_policy(policy, train_cfg.task, train_cfg.policy, cfg.eval, out_dir / name, device,
                                 progress=progress, title=name)
    row.update(success=summary["success_rate"], episodes=summary["n_episodes"],
               eval_seconds=round(time.perf_counter() - started, 1), eval=summary)
    return row


def action_gap(policy, train_cfg, cfg: DictConfig, device) -> float:
    """Largest |cached - uncached| over chunks from the first evaluation observations, same noise."""
    gaps = []
    for i in range(4):
        obs = first_observation(train_cfg.task, train_cfg.policy.obs_horizon, cfg.eval.seed + i, device)
        noise = torch.randn(1, policy.pred_horizon, policy.action_dim, generator=torch.Generator().manual_seed(i))
        chunks = []
        for cached in (False, True):
            policy.denoiser.expert_cache = cached
            chunks.append(policy.predict_chunk(obs, noise=noise.to(device)).actions)
        gaps.append((chunks[0] - chunks[1]).abs().max().item())
    return max(gaps)


def usage_table(usage: list, levels: list[float]) -> str:
    columns = ["step", "level", *[f"layer {i}" for i in range(len(usage))]]
    cells = [[str(s), f"{level:.1f}", *[" + ".join(f"e{e} {w:.2f}" for e, w in layer[s]) for layer in usage]]
             for s, level in enumerate(levels)]
    return markdown_table(columns, cells)


def _mflops(value) -> str:
    return f"{value / 1e6:.2f}"


def table(rows: list[dict]) -> str:
    cells = [[r["policy"], f"{r['params']:,}", f"{r['active_params']:,}", _mflops(r["flops_per_call"]),
              _mflops(r["flops_per_chunk"]), f"{r['ms_per_call']:.2f}", f"{r['ms_per_chunk']:.1f}",
              f"{r['success']:.2f}", str(r["episodes"])] for r in rows]
    return markdown_table(COLUMNS, cells)


def run(cfg: DictConfig, progress: bool = True) -> dict:
    if cfg.experts < 2 or not 1 <= cfg.top_k < cfg.experts:
        raise ValueError(f"need experts >= 2 and 1 <= top_k < experts, got experts={cfg.experts}, top_k={cfg.top_k}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    configs = train_configs(cfg, out_dir)
    checkpoints = {"dense": cfg.dense_checkpoint, "mode": cfg.mode_checkpoint}
    policies = {}
    for name, tcfg in configs.items():
        ckpt = trained(name, tcfg, checkpoints[name], cfg, progress)
        policy, train_cfg, meta = load_policy(ckpt, device)
        policies[name] = (policy, train_cfg, meta)
    dense, dense_cfg, dense_meta = policies["dense"]
    mode, mode_cfg, mode_meta = policies["mode"]
    rows = [bench_row("dense transformer", dense, dense_cfg, cfg, out_dir, device, False, progress),
            bench_row("MoDE uncached", mode, mode_cfg, cfg, out_dir, device, False, progress),
            bench_row("MoDE cached", mode, mode_cfg, cfg, out_dir, device, True, progress)]
    levels = mode.process.levels()
    usage = mode.denoiser.expert_routing(levels)
    result = {"task": mode_cfg.task.name, "experts": cfg.experts, "top_k": cfg.top_k,
              "train_steps": {"dense": dense_meta["step"], "mode": mode_meta["step"]},
              "train_seconds": {"dense": dense_meta.get("train_seconds"), "mode": mode_meta.get("train_seconds")},
              "flops_saved_vs_dense": round(1 - rows[2]["flops_per_chunk"] / rows[0]["flops_per_chunk"], 4),
              "max_abs_action_gap_cached_vs_uncached": action_gap(mode, mode_cfg, cfg, device),
              "expert_usage": {"levels": levels, "layers": usage}, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    text = (f"{table(rows)}\n\nMoDE cached vs dense: {100 * result['flops_saved_vs_dense']:.1f}% fewer FLOPs per "
            f"chunk; cached vs uncached actions differ by at most {result['max_abs_action_gap_cached_vs_uncached']:.1e}."
            f"\n\nExperts routed to at each sampling step (weight):\n\n{usage_table(usage, levels)}")
    (out_dir / "results.md").write_text(text + "\n")
    print("\n" + text + f"\n\nresults: {out_dir / 'results.json'}")
    return result
