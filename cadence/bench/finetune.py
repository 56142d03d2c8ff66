"""``cadence bench finetune``: ReinFlow (rectified flow, shortcut) vs a DPPO-style baseline vs no fine-tuning.

One run, one task. Every policy is pretrained by imitation on the same few demonstrations
(``demos``, collected into ``data/<task>-<demos>demos.zarr`` if missing; few pretraining steps,
so there is room to improve), or loaded. Each fine-tuned row then runs ``cadence finetune`` with
the same settings and environment-step budget (``finetune.*``, per-row ``overrides`` on top);
the no-fine-tuning row evaluates its pretrained policy only. All evaluations use the same seeds
and the deterministic sampler.

Per row: pretrained and final success, best success, environment steps and wall time
(evaluations excluded) until success first reached ``target``, total wall time, seconds per
iteration. ``results.json``, ``results.md`` and ``curves.png`` (success against environment steps
and against wall time, all rows) go to ``out_dir``; each row's run folder holds its own
``curve.json``, metrics and checkpoint. Re-running with the same ``out_dir`` resumes unfinished rows.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from cadence.bench.common import trained, write_results
from cadence.checkpoint import load_policy
from cadence.bench.config import FinetuneMethod
from cadence.config import FinetuneApp
from cadence.device import resolve_device
from cadence.sim_eval import evaluate_policy, set_sample_steps
from cadence.finetune import finetune
from cadence.learning_curve import plot_learning_curves
from cadence.markdown_table import markdown_table

log = logging.getLogger(__name__)

COLUMNS = ("method", "policy", "steps", "pretrained", "final", "best", "env steps to target", "wall s to target",
           "wall s", "s / iteration")


def pretrain(cfg: DictConfig, method: DictConfig, dataset: str, out_dir: Path, progress: bool) -> Path:
    overrides = [f"policy={method.policy}", f"task={cfg.task.name}", f"task.dataset={dataset}",
                 f"train.steps={method.pretrain_steps}", f"policy.sample_steps={method.sample_steps}",
                 "train.eval_every=0", "eval.episodes=0", *cfg.pretrain_overrides,
                 f"run_dir={out_dir / f'pretrain-{method.policy}-{method.pretrain_steps}'}"]
    tcfg = hydra.compose(config_name="train", overrides=overrides)
    existing = Path(tcfg.run_dir) / "checkpoint"
    return trained(method.policy, tcfg, method.checkpoint or (str(existing) if existing.exists() else None), cfg,
                   progress)


def run_method(cfg: DictConfig, method: DictConfig, checkpoint: Path, out_dir: Path, progress: bool) -> list[dict]:
    """The method's learning curve (rows with iteration, env_steps, wall_s, success_rate)."""
    run_dir = out_dir / method.name.replace(" ", "-")
    if not method.finetune:
        device = resolve_device(cfg.finetune.device)
        policy, train_cfg, _ = load_policy(checkpoint, device)
        set_sample_steps(policy, method.sample_steps)
        train_cfg.policy.sample_steps = method.sample_steps
        summary, _ = evaluate_policy(policy, train_cfg.task, train_cfg.policy, cfg.eval, run_dir, device,
                                     progress=progress, title=method.name)
        return [{"iteration": 0, "env_steps": 0, "wall_s": 0.0, "success_rate": summary["success_rate"]}]
    fcfg = OmegaConf.merge(cfg.finetune, {"sample_steps": method.sample_steps},
                           OmegaConf.from_dotlist([o.removeprefix("finetune.") for o in method.overrides]))
    app = OmegaConf.merge(OmegaConf.structured(FinetuneApp), {
        "checkpoint": str(checkpoint), "finetune": fcfg, "eval": cfg.eval, "run_dir": str(run_dir),
        "resume": (run_dir / "checkpoint").exists()})
    log.info("fine-tuning %s (%s, %d steps)", method.name, method.policy, method.sample_steps)
    finetune(app, run_dir, progress=progress)
    return json.loads((run_dir / "curve.json").read_text())


def summarize(method: DictConfig, curve: list[dict], target: float) -> dict:
    reached = next((r for r in curve if r["success_rate"] >= target), None)
    iterations = curve[-1]["iteration"]
    return {"method": method.name, "policy": method.policy, "sample_steps": method.sample_steps,
            "pretrained": curve[0]["success_rate"], "final": curve[-1]["success_rate"],
            "best": max(r["success_rate"] for r in curve),
            "env_steps_to_target": None if reached is None else reached["env_steps"],
            "wall_s_to_target": None if reached is None else reached["wall_s"],
            "env_steps": curve[-1]["env_steps"], "wall_s": curve[-1]["wall_s"], "iterations": iterations,
            "s_per_iteration": round(curve[-1]["wall_s"] / iterations, 2) if iterations else None, "curve": curve}


def table(rows: list[dict]) -> str:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    cells = [[r["method"], r["policy"], str(r["sample_steps"]), f"{r['pretrained']:.2f}", f"{r['final']:.2f}",
              f"{r['best']:.2f}", fmt(r["env_steps_to_target"], ","), fmt(r["wall_s_to_target"], ".0f"),
              f"{r['wall_s']:.0f}", fmt(r["s_per_iteration"], ".2f")] for r in rows]
    return markdown_table(COLUMNS, cells)


def verdict(rows: list[dict], target: float) -> tuple[bool | None, str]:
    """ReinFlow (flow): from <= 0.6 to >= target, reaching it in less wall time than the DPPO-style rows."""
    flow = next((r for r in rows if r["method"] == "reinflow-flow"), None)
    dppo = [r for r in rows if r["policy"] == "diffusion" and r["iterations"]]
    if flow is None or not dppo:
        return None, ""
    faster = flow["wall_s_to_target"] is not None and all(
        d["wall_s_to_target"] is None or flow["wall_s_to_target"] < d["wall_s_to_target"] for d in dppo)
    met = flow["pretrained"] <= 0.6 and flow["best"] >= target and faster
    dppo_text = ", ".join(f"{d['method']} " + ("never" if d["wall_s_to_target"] is None else f"{d['wall_s_to_target']:.0f} s")
                          for d in dppo)
    return met, (f"Target (reinflow-flow from <= 0.60 to >= {target:.2f}, in less wall time than DPPO): "
                 f"{'met' if met else 'NOT met'} (pretrained {flow['pretrained']:.2f}, best {flow['best']:.2f}; "
                 f"reached {target:.2f} after "
                 f"{'never' if flow['wall_s_to_target'] is None else format(flow['wall_s_to_target'], '.0f') + ' s'}"
                 f" vs {dppo_text}).")


def run(cfg: DictConfig, progress: bool = True) -> dict:
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = [OmegaConf.merge(OmegaConf.structured(FinetuneMethod), m) for m in cfg.methods]
    if not methods:
        raise ValueError("methods must name at least one row")
    dataset = f"data/{cfg.task.name}-{cfg.demos}demos.zarr"
    collect_cfg = OmegaConf.merge(cfg.collect, {"episodes": cfg.demos})
    cfg = OmegaConf.merge(cfg, {"collect": collect_cfg})
    rows = []
    for method in methods:
        checkpoint = pretrain(cfg, method, dataset, out_dir, progress)
        rows.append(summarize(method, run_method(cfg, method, checkpoint, out_dir, progress), cfg.target))
    plot_learning_curves({r["method"]: r["curve"] for r in rows}, out_dir / "curves.png",
                         title=f"{cfg.task.name}: RL fine-tuning from {cfg.demos} demonstrations")
    met, text = verdict(rows, cfg.target)
    result = {"task": cfg.task.name, "demos": cfg.demos, "env_step_budget": cfg.finetune.env_steps,
              "target": cfg.target, "target_met": met, "rows": rows}
    footer = (f"Task {cfg.task.name}, pretrained on {cfg.demos} demonstrations; budget {cfg.finetune.env_steps:,} "
              f"environment steps per fine-tuned row ({cfg.finetune.envs} envs); {cfg.eval.episodes} evaluation "
              f"episodes from seed {cfg.eval.seed}, deterministic sampler; wall time excludes evaluations.")
    write_results(out_dir, result, f"{table(rows)}\n\n{footer}" + (f"\n\n{text}" if text else ""))
    return result
