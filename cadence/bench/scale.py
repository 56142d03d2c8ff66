"""``cadence bench scale``: training throughput with 1, 2, ... data-parallel processes (torchrun).

Each row trains the same policy for ``steps`` steps with the same global batch, under
``torchrun --standalone --nproc_per_node=N`` (N > 1) or as one plain process, each process with
``threads`` torch threads (default: this machine's cores shared out), once per entry of
``precisions`` (``train.precision``; on CUDA one GPU per process). Throughput is the median of
the logged samples/s windows after the first (warm-up); the final logged loss is shown so that
rows can be seen to train alike. ``results.json`` and ``results.md`` go to ``out_dir``.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from cadence import distributed
from cadence.bench.common import write_results
from cadence.collect import collect_missing
from cadence.device import resolve_device
from cadence.markdown_table import markdown_table

COLUMNS = ("processes", "precision", "threads / process", "global batch", "batch / process", "samples / s",
           "speedup", "final loss", "device")


def train_command(cfg: DictConfig, n: int, threads: int, run_dir: Path, precision: str = "fp32") -> list[str]:
    return [*distributed.launcher(n), "-m", "cadence.cli", "train", f"task={cfg.task.name}", f"task.dataset={cfg.task.dataset}",
            f"policy={cfg.policy_name}", f"train.steps={cfg.steps}", f"train.batch_size={cfg.batch_size}",
            f"train.threads={threads}", f"train.log_every={cfg.log_every}", f"train.device={cfg.device}",
            f"train.precision={precision}", "train.eval_every=0", "train.checkpoint_every=0", "eval.episodes=0",
            *cfg.overrides, f"run_dir={run_dir}"]


def measure(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    steady = rates[1:] or rates
    return {"samples_per_s": round(float(np.median(steady)), 1), "windows": len(steady),
            "final_loss": next(r["loss"] for r in reversed(records) if "loss" in r)}


def run(cfg: DictConfig, progress: bool = True) -> dict:
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bad = [n for n in cfg.processes if int(n) < 1 or cfg.batch_size % int(n)]
    if bad:
        raise ValueError(f"processes {bad}: each must be >= 1 and divide batch_size ({cfg.batch_size})")
    device = str(resolve_device(cfg.device))
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    if gpus and max(map(int, cfg.processes)) > gpus:
        raise ValueError(f"processes {list(cfg.processes)}: NCCL needs a GPU per process and this machine has {gpus}")
    collect_missing(cfg.task, cfg.collect, progress=progress)
    rows = []
    for n in map(int, cfg.processes):
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // n)
        for precision in cfg.precisions:
            run_dir = out_dir / f"{n}-processes-{precision}"
            proc = subprocess.run(train_command(cfg, n, threads, run_dir, precision), capture_output=True, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
            if proc.returncode != 0:
                raise RuntimeError(f"training with {n} processes ({precision}) failed:\n{proc.stdout[-2000:]}\n"
                                   f"{proc.stderr[-4000:]}")
            rows.append({"processes": n, "precision": precision, "threads_per_process": threads,
                         "global_batch": cfg.batch_size, "batch_per_process": cfg.batch_size // n, "device": device,
                         **measure(run_dir)})
            print(f"{n} process(es), {precision}: {rows[-1]['samples_per_s']:.0f} samples/s", flush=True)
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup"] = round(r["samples_per_s"] / base, 2)
    cells = [[str(r["processes"]), r["precision"], str(r["threads_per_process"]), str(r["global_batch"]), str(r["batch_per_process"]),
              f"{r['samples_per_s']:,.0f}", f"{r['speedup']:.2f}x", f"{r['final_loss']:.4f}", r["device"]] for r in rows]
    gpu = torch.cuda.get_device_name() if gpus else None
    result = {"task": cfg.task.name, "policy": cfg.policy_name, "steps": cfg.steps, "cpu_count": os.cpu_count(),
              "gpu": gpu, "rows": rows}
    footer = (f"Task {cfg.task.name}, policy {cfg.policy_name}, {cfg.steps} steps per row; samples/s = median of the "
              f"logged {cfg.log_every}-step windows after the first; speedup against {rows[0]['processes']} "
              f"process(es), {rows[0]['precision']}; {os.cpu_count()} CPU cores{f', {gpus} x {gpu}' if gpu else ''}.")
    write_results(out_dir, result, f"{markdown_table(COLUMNS, cells)}\n\n{footer}")
    return result
