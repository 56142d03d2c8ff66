"""``cadence bench eval``: one checkpoint's evaluation, run in each of several setups, timed side by side.

Every row runs ``cadence eval`` on the same seeds: in one process with all episodes in one batch
(the plain evaluation, the baseline), in waves of ``batch_size``, with the simulators stepped in
``AsyncVectorEnv`` workers, and over ``torchrun`` ranks. The time is the rollouts' own wall time
(``rollout_seconds`` in eval.json: process start and checkpoint loading excluded; the command's
total is shown beside it). Rows with the same wave size must give the same episodes (the
evaluation seeds each wave's noise by its number): the ``same episodes as`` column names the first
row whose per-episode outcomes are identical. ``results.json`` and ``results.md`` go to ``out_dir``.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cadence import distributed
from cadence.bench.common import write_results
from cadence.checkpoint import resolve_checkpoint_dir
from cadence.bench.config import EvalSetup
from cadence.markdown_table import markdown_table

COLUMNS = ("setup", "processes", "async envs", "episodes / wave", "waves", "rollout s", "episodes / s", "speedup",
           "command s", "success", "same episodes as")


def eval_command(cfg: DictConfig, setup: EvalSetup, batch_size: int, out_dir: Path) -> list[str]:
    return [*distributed.launcher(setup.processes), "-m", "cadence.cli", "eval", f"checkpoint={cfg.checkpoint}", f"device={cfg.device}",
            f"eval.episodes={cfg.episodes}", f"eval.seed={cfg.seed}", f"eval.batch_size={batch_size}",
            f"eval.async_envs={str(setup.async_envs).lower()}", "eval.video_episodes=0", "eval.plot=false",
            "eval.latency_calls=0", f"out_dir={out_dir}"]


def run(cfg: DictConfig, progress: bool = True) -> dict:
    setups = [OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalSetup), s)) for s in cfg.setups]
    if not setups:
        raise ValueError("setups is empty: nothing to compare")
    for i, setup in enumerate(setups):
        if setup.processes < 1:
            raise ValueError(f"setups[{i}] ({setup.name}): processes must be >= 1, got {setup.processes}")
    resolve_checkpoint_dir(cfg.checkpoint)          # a missing checkpoint fails here, with its path
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, outcomes = [], []
    for i, setup in enumerate(setups):
        batch = cfg.batch_size if setup.batch_size is None else setup.batch_size
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // setup.processes)
        row_dir = out_dir / f"{i}-{setup.name.replace(' ', '-').replace(',', '')}"
        started = time.perf_counter()
        proc = subprocess.run(eval_command(cfg, setup, batch, row_dir), capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        command_s = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{setup.name}: cadence eval failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result = json.loads((row_dir / "eval.json").read_text())
        episodes = result["episodes"]
        same = next((rows[j]["setup"] for j in range(len(rows))
                     if outcomes[j] == episodes and rows[j]["episodes_per_wave"] == result["batch_size"]), setup.name)
        outcomes.append(episodes)
        rows.append({"setup": setup.name, "processes": setup.processes, "async_envs": setup.async_envs,
                     "threads_per_process": threads, "episodes_per_wave": result["batch_size"], "waves": result["waves"],
                     "rollout_s": result["rollout_seconds"], "command_s": round(command_s, 2),
                     "episodes_per_s": round(cfg.episodes / max(result["rollout_seconds"], 1e-9), 2),
                     "success_rate": result["success_rate"], "same_episodes_as": same})
        if progress:
            print(f"{setup.name}: {result['rollout_seconds']:.1f} s of rollouts, success {result['success_rate']:.2f}",
                  flush=True)
    base = rows[0]["rollout_s"]
    for r in rows:
        r["speedup"] = round(base / max(r["rollout_s"], 1e-9), 2)
    cells = [[r["setup"], str(r["processes"]), "yes" if r["async_envs"] else "no", str(r["episodes_per_wave"]),
              str(r["waves"]), f"{r['rollout_s']:.1f}", f"{r['episodes_per_s']:.2f}", f"{r['speedup']:.2f}x",
              f"{r['command_s']:.1f}", f"{r['success_rate']:.2f}", r["same_episodes_as"]] for r in rows]
    result = {"checkpoint": str(cfg.checkpoint), "episodes": cfg.episodes, "seed": cfg.seed,
              "cpu_count": os.cpu_count(), "rows": rows}
    footer = (f"{cfg.episodes} episodes (seeds {cfg.seed}-{cfg.seed + cfg.episodes - 1}) of {cfg.checkpoint}; rollout s "
              f"= the rollouts' wall time (eval.json), command s = the whole `cadence eval` with start-up; speedup "
              f"against '{rows[0]['setup']}'; {os.cpu_count()} CPU cores.")
    write_results(out_dir, result, f"{markdown_table(COLUMNS, cells)}\n\n{footer}")
    return result
