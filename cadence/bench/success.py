"""``cadence bench success``: train (or load) policies on a list of tasks and evaluate each on the
same fixed seeds; one table (task, observations, policy, success, score, episodes, training
steps and wall time, the Diffusion Policy paper's number) printed and written to results.json.

Metrics, per task: ``success`` is the share of episodes whose env reported ``is_success``
(PushT: coverage >= 0.95 at some step, as LeRobot reports it); ``score`` is the mean over
episodes of the largest step reward (PushT: min(coverage / 0.95, 1), the Diffusion Policy
paper's PushT metric); ``final coverage`` is the coverage at each episode's last step (PushT).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from cadence.checkpoint import load_policy, resolve_checkpoint_dir
from cadence.collect import collect_missing
from cadence.bench.config import BenchSuccessEntry
from cadence.datasets.window_dataset import is_image_shape
from cadence.device import resolve_device
from cadence.sim_eval import evaluate_policy, set_sample_steps
from cadence.markdown_table import markdown_table

log = logging.getLogger(__name__)

# Diffusion Policy paper (Chi et al., RSS 2023), CNN policies, mean of the last 10 checkpoints
# (3 training seeds x 50 initial conditions). robomimic tasks: its proficient-human ("ph")
# demonstrations, not our scripted ones. PushT: score (largest reward), keypoint and image policies.
PAPER = {"pusht": 0.91, "pusht_image": 0.84, "lift": 0.98, "can": 0.96, "square": 0.93,
         "lift_image": 1.00, "can_image": 0.97, "square_image": 0.92}

COLUMNS = ("task", "obs", "policy", "success", "score", "final coverage", "episodes",
           "train steps", "train s", "paper")


def train_config(entry: DictConfig, cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The `cadence train` config of one entry: its task, policy, steps and overrides; evaluation
    is left to the benchmark, so every entry is evaluated the same way."""
    overrides = [f"task={entry.task}", f"policy={entry.policy}", f"train.steps={entry.steps}",
                 "train.eval_every=0", "eval.episodes=0", f"run_dir={run_dir}", *entry.overrides]
    if cfg.threads:
        overrides.append(f"train.threads={cfg.threads}")
    return hydra.compose(config_name="train", overrides=overrides)


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def bench_entry(entry: DictConfig, cfg: DictConfig, out_dir: Path, progress: bool = True) -> dict:
    from cadence.train import train

    device = resolve_device(cfg.device)
    if entry.checkpoint:
        ckpt = resolve_checkpoint_dir(entry.checkpoint)
    else:
        tcfg = train_config(entry, cfg, out_dir)
        collect_missing(tcfg.task, cfg.collect, progress=progress)
        ckpt = train(tcfg, out_dir, progress=progress)
    policy, train_cfg, meta = load_policy(ckpt, device)
    set_sample_steps(policy, entry.sample_steps)
    started = time.perf_counter()
    summary, _ = evaluate_policy(policy, train_cfg.task, train_cfg.policy, cfg.eval, out_dir / "eval", device,
                                 progress=progress, title=f"{train_cfg.policy.name} on {train_cfg.task.name}")
    task = train_cfg.task.name
    return {"task": task, "obs": obs_kind(meta["obs_shapes"]), "obs_keys": list(train_cfg.task.obs_keys),
            "policy": train_cfg.policy.name,
            "process": train_cfg.policy.process, "sample_steps": summary.get("sample_steps"),
            "success": summary["success_rate"], "score": summary["mean_max_reward"],
            "final_coverage": summary.get("mean_final_coverage"), "episodes": summary["n_episodes"],
            "train_steps": int(meta["step"]), "train_seconds": meta.get("train_seconds"),
            "eval_seconds": round(time.perf_counter() - started, 1), "paper": PAPER.get(task),
            "checkpoint": str(ckpt), "eval": summary}


def obs_kind(obs_shapes: dict) -> str:
    """``low-dim``, or ``N images + low-dim`` / ``N images``."""
    images = sum(is_image_shape(s) for s in obs_shapes.values())
    if not images:
        return "low-dim"
    return f"{images} image{'s' if images > 1 else ''}" + (" + low-dim" if images < len(obs_shapes) else "")


def table(rows: list[dict]) -> str:
    cells = [[r["task"], r["obs"], f"{r['policy']} ({r['sample_steps'] or '-'} steps)", _fmt(r["success"]),
              _fmt(r["score"], 3), _fmt(r["final_coverage"], 3), str(r["episodes"]), str(r["train_steps"]),
              _fmt(r["train_seconds"], 0), _fmt(r["paper"])] for r in rows]
    return markdown_table(COLUMNS, cells)


def run(cfg: DictConfig) -> list[dict]:
    if not cfg.entries:
        raise ValueError("entries is empty: give at least one {task, policy, steps} or {checkpoint}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = OmegaConf.structured(BenchSuccessEntry)
    rows = []
    for i, raw in enumerate(cfg.entries):
        entry = OmegaConf.merge(schema, raw)
        name = Path(entry.checkpoint).name if entry.checkpoint else f"{entry.task}-{entry.policy}"
        rows.append(bench_entry(entry, cfg, out_dir / f"{i:02d}-{name}"))
        # written after every entry, so a long benchmark cut short keeps what it measured
        (out_dir / "results.json").write_text(json.dumps(
            {"eval_episodes": cfg.eval.episodes, "eval_seed": cfg.eval.seed, "rows": rows}, indent=2))
        log.info("%s: %s", name, table(rows[-1:]).splitlines()[-1])
    text = table(rows)
    (out_dir / "results.md").write_text(
        f"success: share of episodes the env called successful; score: mean of each episode's largest "
        f"reward (PushT: the Diffusion Policy paper's coverage score); paper: that paper's CNN number.\n\n{text}\n")
    print("\n" + text + f"\n\nresults: {out_dir / 'results.json'}")
    return rows
