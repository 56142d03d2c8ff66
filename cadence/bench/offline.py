"""``cadence bench offline``: how far the offline number can be trusted, and how fast data imports.

1. **Offline against rollouts.** One training run on a task that has a simulator (PushT's real
   human demonstrations by default) holds out ``val_episodes`` episodes. At ``checkpoints``
   evenly spaced steps it evaluates the same weights both ways: rollouts on the fixed evaluation
   seeds (success and score: the mean of each episode's largest reward) and offline validation on
   the held-out episodes (action L1 and min-of-K L1, task units). The Spearman rank correlation
   between the score and the negated offline errors says how well the offline number orders
   checkpoints (1: the same order).
2. **Import throughput.** Frames per second of ``cadence import`` on datasets written here by
   their formats' real writers: a LeRobot v2.1 dataset (parquet + H.264 mp4, PyAV-decoded and
   resized to ``image_size``) and a robomimic HDF5 (h5py, images and state).

One table, printed and written to ``results.json`` in ``out_dir``.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from cadence.markdown_table import markdown_table

log = logging.getLogger(__name__)


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 points or no spread."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):              # ties share their mean rank
        ranks[x == value] = ranks[x == value].mean()
    return ranks


def agreement(run_dir: Path) -> dict:
    """Rows (step, success, score, offline L1, min-of-K L1) from a run's ``eval-step*/eval.json``
    and the rank correlations."""
    rows = []
    found = [(int(p.parent.name[len("eval-step"):]), p) for p in run_dir.glob("eval-step*/eval.json")
             if re.fullmatch(r"[0-9]+", p.parent.name[len("eval-step"):])]
    for step, path in sorted(found):
        summary = json.loads(path.read_text())
        if "offline" not in summary or "success_rate" not in summary:
            continue
        rows.append({"step": step, "success": summary["success_rate"],
                     "score": summary.get("mean_max_reward"), "offline_l1": summary["offline"]["l1"],
                     "min_of_k_l1": summary["offline"]["min_of_k_l1"]})
    score = [r["score"] for r in rows]
    return {"rows": rows,
            "spearman_score_vs_l1": spearman(score, [-r["offline_l1"] for r in rows]),
            "spearman_score_vs_min_of_k": spearman(score, [-r["min_of_k_l1"] for r in rows])}


def train_run(cfg: DictConfig, run_dir: Path) -> Path:
    from cadence.train import train

    if cfg.checkpoints < 1 or cfg.steps < cfg.checkpoints:
        raise ValueError(f"need 1 <= checkpoints <= steps, got checkpoints={cfg.checkpoints}, steps={cfg.steps}")
    every = cfg.steps // cfg.checkpoints
    overrides = [f"task={cfg.task_name}", f"policy={cfg.policy_name}", f"train.steps={every * cfg.checkpoints}",
                 f"train.eval_every={every}", f"train.val_episodes={cfg.val_episodes}",
                 f"eval.episodes={cfg.eval.episodes}", f"eval.seed={cfg.eval.seed}", "eval.video_episodes=0",
                 "eval.plot=false", "eval.latency_calls=0", f"eval.offline_samples={cfg.eval.offline_samples}",
                 "eval.offline_plot_episodes=0", "tracking=none", f"run_dir={run_dir}", *cfg.overrides]
    if cfg.threads:
        overrides.append(f"train.threads={cfg.threads}")
    train(hydra.compose(config_name="train", overrides=overrides), run_dir)
    return run_dir


def import_throughput(cfg: DictConfig, work: Path) -> list[dict]:
    from cadence.bench.datasets import write_lerobot_v21, write_robomimic
    from cadence.datasets.lerobot_import import import_lerobot
    from cadence.datasets.robomimic_import import import_robomimic

    n, frames = cfg.import_episodes, cfg.import_frames
    h, w = cfg.video_size
    rows = []
    source = write_lerobot_v21(work / "lerobot", n, frames, (h, w))
    started = time.perf_counter()
    store = import_lerobot(source, work / "lerobot.zarr", image_size=list(cfg.image_size), progress=False)
    seconds = time.perf_counter() - started
    rows.append({"format": f"lerobot v2.1 (H.264 {h}x{w} -> {cfg.image_size[0]}x{cfg.image_size[1]})",
                 "frames": store.n_steps, "seconds": seconds, "frames_per_s": store.n_steps / seconds})
    source = write_robomimic(work / "robomimic.hdf5", n, frames, tuple(cfg.image_size))
    started = time.perf_counter()
    store = import_robomimic(source, work / "robomimic.zarr", progress=False)
    seconds = time.perf_counter() - started
    rows.append({"format": f"robomimic HDF5 ({cfg.image_size[0]}x{cfg.image_size[1]} images + state)",
                 "frames": store.n_steps, "seconds": seconds, "frames_per_s": store.n_steps / seconds})
    return rows


def run(cfg: DictConfig) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(cfg.run) if cfg.run else train_run(cfg, out / "run")
    found = agreement(run_dir)
    if not found["rows"]:
        raise ValueError(f"{run_dir}: no evaluation with both rollouts and offline validation (eval-step*/eval.json); "
                         "train with a simulator, eval.episodes > 0 and train.val_episodes > 0")
    result = {"task": cfg.task_name, "policy": cfg.policy_name, "run": str(run_dir), "val_episodes": cfg.val_episodes,
              "eval_episodes": cfg.eval.episodes, **found}
    if cfg.throughput:
        result["import"] = import_throughput(cfg, out / "import")
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(markdown_table(["step", "success", "score", "offline L1", f"min-of-{cfg.eval.offline_samples} L1"],
                         [[str(r["step"]), f"{r['success']:.2f}", f"{r['score']:.3f}", f"{r['offline_l1']:.4f}",
                          f"{r['min_of_k_l1']:.4f}"] for r in result["rows"]]))
    print(f"Spearman rank correlation of score with -offline L1: {result['spearman_score_vs_l1']:.2f}, "
          f"with -min-of-K L1: {result['spearman_score_vs_min_of_k']:.2f}")
    if cfg.throughput:
        print(markdown_table(["import", "frames", "s", "frames/s"],
                             [[r["format"], str(r["frames"]), f"{r['seconds']:.2f}", f"{r['frames_per_s']:.0f}"]
                              for r in result["import"]]))
    print(f"results in {out / 'results.json'}")
    return result
