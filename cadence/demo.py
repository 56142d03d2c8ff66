"""``cadence demo``: the whole path on the default task, in one command.

Collects expert demonstrations (unless the task's store exists), trains each configured
policy (diffusion, flow, and the regression control by default), evaluates each on the same
fixed seeds, prints a table and writes ``results.json`` and ``report.md`` with the plots.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cadence.checkpoint import load_policy
from cadence.collect import collect
from cadence.config import TrainApp
from cadence.sim_eval import first_observation, measure_latency
from cadence.markdown_table import markdown_table
from cadence.train import train


COLUMNS = ("policy", "process", "train steps", "train s", "success", "left", "right", "steps/chunk", "ms/chunk")


def train_config(cfg: DictConfig, name: str, run_dir: Path) -> DictConfig:
    if name not in cfg.demo.steps:
        raise KeyError(f"demo.steps has no entry for policy {name!r} (has {list(cfg.demo.steps)})")
    train_cfg = OmegaConf.merge(cfg.train, {"steps": cfg.demo.steps[name]})
    return OmegaConf.merge(OmegaConf.structured(TrainApp), {
        "task": cfg.task, "policy": cfg.policies[name], "train": train_cfg, "eval": cfg.eval,
        "tracking": cfg.tracking, "run_dir": str(run_dir), "resume": False})


def table(rows: list[dict]) -> str:
    cells = [[str(r[c]) for c in COLUMNS] for r in rows]
    return markdown_table(COLUMNS, cells)


def run_demo(cfg: DictConfig, out_dir: Path, progress: bool = True) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if Path(cfg.task.dataset).exists():
        print(f"using demonstrations in {cfg.task.dataset}")
    else:
        summary = collect(cfg.task, cfg.collect, progress=progress)
        print(f"collected {summary['episodes']} expert episodes into {summary['path']} "
              f"(expert success {summary['expert_success_rate']:.2f}, modes {summary['modes']})")
    rows = []
    for name in cfg.policies:
        run_dir = out_dir / name
        start = time.perf_counter()
        train(train_config(cfg, name, run_dir), run_dir, progress=progress)
        seconds = time.perf_counter() - start
        steps = cfg.demo.steps[name]
        result = json.loads((run_dir / f"eval-step{steps}" / "eval.json").read_text())
        shares = result.get("mode_shares", {})
        rows.append({"policy": name, "process": cfg.policies[name].process, "train steps": steps,
                     "train s": round(seconds), "success": f"{result['success_rate']:.2f}",
                     "left": f"{shares.get('left', 0.0):.2f}", "right": f"{shares.get('right', 0.0):.2f}",
                     "steps/chunk": result.get("sample_steps"),
                     "eval": result, "run_dir": str(run_dir)})
    for row, ms in zip(rows, side_by_side_latency(cfg, [row["run_dir"] for row in rows])):
        row["ms/chunk"] = f"{ms:.1f}"
    write_report(cfg, out_dir, rows)
    return rows


def side_by_side_latency(cfg: DictConfig, run_dirs: list[str], rounds: int = 5) -> list[float]:
    """Median batch-1 ms per chunk of each trained policy, timed in interleaved rounds so that
    all of them see the same machine state."""
    policies = [load_policy(run_dir)[0] for run_dir in run_dirs]
    obs = [first_observation(cfg.task, p.obs_horizon, cfg.eval.seed, "cpu") for p in policies]
    calls = max(1, cfg.eval.latency_calls // rounds)
    samples: list[list[float]] = [[] for _ in policies]
    for _ in range(rounds):
        for i, (policy, o) in enumerate(zip(policies, obs)):
            samples[i].append(measure_latency(policy, o, calls, warmup=1)["ms_per_chunk"])
    return [statistics.median(s) for s in samples]


def write_report(cfg: DictConfig, out_dir: Path, rows: list[dict]) -> None:
    text = table(rows)
    (out_dir / "results.json").write_text(json.dumps(
        {"task": cfg.task.name, "eval_episodes": cfg.eval.episodes, "eval_seed": cfg.eval.seed, "rows": rows}, indent=2))
    lines = [f"# cadence demo on {cfg.task.name}", "",
             f"{cfg.eval.episodes} evaluation episodes per policy (seeds {cfg.eval.seed}..."
             f"{cfg.eval.seed + cfg.eval.episodes - 1}); left/right = share of successful episodes per mode; "
             "ms/chunk = median batch-1 `predict_chunk` time on this machine, all policies timed in "
             "interleaved rounds after training.", "", text, ""]
    for row in rows:
        plot = row["eval"].get("plot")
        if plot:
            lines += [f"## {row['policy']}", "", f"![{row['policy']} trajectories]({Path(plot).relative_to(out_dir)})", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    print("\n" + text + f"\n\nreport: {out_dir / 'report.md'}")


def run(cfg: DictConfig) -> list[dict]:
    return run_demo(cfg, Path(cfg.demo.out_dir))
