"""``cadence bench record``: are demonstrations recorded through the robot seam as good to train
on as the scripted expert's? Side by side, one run:

1. ``cadence record`` with the scripted teleoperator: the simulated robot in real time at the
   task rate, behind the safety filter, each episode appended when it ends;
2. ``cadence collect`` of the same number of episodes with the same expert in lockstep (no clock);
3. the same diffusion policy trained on each store with the same steps, evaluated on the same
   seeds. Table + results.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from cadence.bench.config import BenchSuccessEntry
from cadence.bench.success import bench_entry
from cadence.collect import collect
from cadence.datasets.episode_store import EpisodeStore
from cadence.markdown_table import markdown_table


def run(cfg: DictConfig) -> dict:
    from cadence import record

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stores = {"recorded": out / "recorded.zarr", "collected": out / "collected.zarr"}
    seconds = {}
    if not stores["recorded"].exists():
        started = time.perf_counter()
        record.run(hydra.compose(config_name="record", overrides=[
            f"task={cfg.task}", f"task.dataset={stores['recorded']}", f"record.episodes={cfg.episodes}"]))
        seconds["recorded"] = time.perf_counter() - started
    if not stores["collected"].exists():
        started = time.perf_counter()
        task = hydra.compose(config_name="collect", overrides=[f"task={cfg.task}",
                                                                f"task.dataset={stores['collected']}"]).task
        collect(task, OmegaConf.merge(cfg.collect, {"episodes": cfg.episodes}))
        seconds["collected"] = time.perf_counter() - started
    rows = []
    for source, store_path in stores.items():
        entry = OmegaConf.merge(OmegaConf.structured(BenchSuccessEntry), {
            "task": cfg.task, "policy": cfg.policy, "steps": cfg.steps,
            "overrides": [f"task.dataset={store_path}", *cfg.overrides]})
        row = bench_entry(entry, cfg, out / source)
        store = EpisodeStore.open(store_path)
        rows.append({"source": source, "store_episodes": store.n_episodes, "store_steps": store.n_steps,
                     "seconds_to_record": seconds.get(source), **{k: row[k] for k in (
                         "policy", "train_steps", "train_seconds", "success", "score", "episodes")}})
        (out / "results.json").write_text(json.dumps({"eval_seed": cfg.eval.seed, "rows": rows}, indent=2))
    text = markdown_table(
        ["demonstrations", "episodes", "steps", "s to gather", "policy", "train steps", "success", "eval episodes"],
        [[r["source"], str(r["store_episodes"]), str(r["store_steps"]),
          "-" if r["seconds_to_record"] is None else f"{r['seconds_to_record']:.0f}", r["policy"],
          str(r["train_steps"]), f"{r['success']:.2f}", str(r["episodes"])] for r in rows])
    print("\n" + text + f"\n\nresults: {out / 'results.json'}")
    return {"rows": rows}
