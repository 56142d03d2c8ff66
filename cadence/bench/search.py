"""``cadence bench search``: inference-time search (more candidates) against more denoising steps.

One trained checkpoint, one task, the same evaluation seeds for every row. Rows:

- ``candidates``: the policy with search (:mod:`cadence.policies.search`) for every verifier x
  method x trust x K in ``candidates`` (K = 1 is the plain policy, one row shared by all), the
  oracle's also for every ``lookahead_chunks`` (the policy's own chunks run after each candidate
  before scoring it); ``value`` reads the run's ``verifier/`` (``cadence verifier train``) or ``value=``;
- ``steps``: the plain policy sampling with each of ``steps`` denoiser calls (DDIM), the other
  way to spend more compute per chunk.

Per row: ms per chunk at batch 1 (median, rows timed round-robin; the oracle's simulated
lookahead is not timed, only its network share), success and score, and their change against
the plain policy. ``results.json``, ``results.md`` and ``success_vs_ms.png`` (success against ms
per chunk: the "more steps" curve and one "more candidates" curve per verifier and method) go to
``out_dir``.
"""
from __future__ import annotations

import copy
from itertools import product
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from cadence.bench.common import write_results
from cadence.bench.pair import variant
from cadence.checkpoint import load_policy, resolve_checkpoint_dir
from cadence.deploy.budget import interleaved_ms
from cadence.device import resolve_device
from cadence.markdown_table import markdown_table
from cadence.policies.search import zero_lookahead
from cadence.sim_eval import evaluate_policy, first_observation, set_search

COLUMNS = ("row", "verifier", "method", "K", "trust", "lookahead", "steps", "ms / chunk", "success", "vs K=1", "score",
           "vs K=1 score")


class NetworkOnly:
    """Times a policy's chunk without the oracle's simulated lookahead (its scores are all zero)."""

    def __init__(self, policy):
        self.policy = policy

    def predict_chunk(self, obs):
        if getattr(self.policy, "uses_lookahead", False):
            return self.policy.predict_chunk(obs, lookahead=zero_lookahead)
        return self.policy.predict_chunk(obs)


def row_specs(policy, cfg: DictConfig, checkpoint_dir: Path) -> list[tuple[dict, object]]:
    """(row fields, policy variant) for every row; the plain policy first. Every search setting is
    checked here, before any evaluation (a value verifier trained on the evaluation seeds is refused)."""
    steps = policy.process.sample_steps
    seeds = range(int(cfg.eval.seed), int(cfg.eval.seed) + int(cfg.eval.episodes))
    plain = {"verifier": "-", "method": "-", "candidates": 1, "trust": 1.0, "lookahead": 0}
    specs = [({"row": "plain", **plain, "steps": steps}, policy)]
    for verifier in cfg.verifiers:
        for method in cfg.methods:
            looks = [int(n) for n in cfg.lookahead_chunks] if verifier == "oracle" else [0]
            for trust, look, k in product((float(t) for t in cfg.trust), looks, (int(k) for k in cfg.candidates)):
                if k == 1:
                    continue
                searched = copy.copy(policy)          # shares the weights; only the search differs
                set_search(searched, OmegaConf.create({"candidates": k, "method": str(method), "verifier": str(verifier),
                                                       "rounds": cfg.rounds, "radius": cfg.radius, "trust": trust,
                                                       "lookahead_chunks": look, "value": cfg.value}),
                           checkpoint_dir, seeds)
                specs.append(({"row": "candidates", "verifier": str(verifier), "method": str(method),
                               "candidates": k, "trust": trust, "lookahead": look, "steps": steps}, searched))
    for s in (int(s) for s in cfg.steps):
        if s != steps:
            specs.append(({"row": "steps", **plain, "steps": s}, variant(policy, s)))
    return specs


def table(rows: list[dict]) -> str:
    cells = [[r["row"], r["verifier"], r["method"], str(r["candidates"]), f"{r['trust']:g}", str(r["lookahead"]),
              str(r["steps"]),
              f"{r['ms_per_chunk']:.2f}",
              f"{r['success']:.2f}", f"{r['success_vs_plain']:+.2f}", f"{r['score']:.3f}",
              f"{r['score_vs_plain']:+.3f}"] for r in rows]
    return markdown_table(COLUMNS, cells)


def plot(rows: list[dict], path: Path, title: str) -> Path:
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    plain = rows[0]
    steps = sorted([plain] + [r for r in rows if r["row"] == "steps"], key=lambda r: r["ms_per_chunk"])
    ax.plot([r["ms_per_chunk"] for r in steps], [r["success"] for r in steps], "k--o", label="more steps (K=1)")
    curve = lambda r: (r["verifier"], r["method"], r["trust"], r["lookahead"])  # noqa: E731
    for verifier, method, trust, look in sorted({curve(r) for r in rows if r["row"] == "candidates"}):
        line = [plain] + [r for r in rows if r["row"] == "candidates" and curve(r) == (verifier, method, trust, look)]
        ax.plot([r["ms_per_chunk"] for r in line], [r["success"] for r in line], "-o",
                label=f"more candidates: {verifier}, {method}" + ("" if trust == 1 else f", trust {trust:g}")
                + (f", +{look} chunks" if look else ""))
    ax.set_xscale("log")
    ax.set_xlabel("ms per chunk (batch 1)")
    ax.set_ylabel("success")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def run(cfg: DictConfig, progress: bool = True) -> dict:
    for k in cfg.candidates:
        if int(k) < 1:
            raise ValueError(f"candidates must all be >= 1, got {list(cfg.candidates)}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    checkpoint_dir = resolve_checkpoint_dir(cfg.checkpoint)
    policy, train_cfg, meta = load_policy(checkpoint_dir, device)
    specs = row_specs(policy, cfg, checkpoint_dir)
    obs = first_observation(train_cfg.task, train_cfg.policy.obs_horizon, cfg.eval.seed, device)
    with torch.no_grad():
        ms = interleaved_ms([NetworkOnly(p) for _, p in specs], obs, int(cfg.timing_calls))
    rows = []
    for (fields, model), t in zip(specs, ms):
        name = (f"{fields['row']}-{fields['verifier']}-{fields['method']}-k{fields['candidates']}-s{fields['steps']}"
                + ("" if fields["trust"] == 1 else f"-t{fields['trust']:g}")
                + (f"-l{fields['lookahead']}" if fields["lookahead"] else ""))
        summary, _ = evaluate_policy(model, train_cfg.task, train_cfg.policy, cfg.eval, out_dir / f"eval-{name}",
                                     device, progress=progress, title=name)
        rows.append({**fields, "ms_per_chunk": round(t, 3), "success": summary["success_rate"],
                     "score": summary.get("mean_max_reward", 0.0), "episodes": summary["n_episodes"]})
    plain = rows[0]
    for r in rows:
        r["success_vs_plain"] = round(r["success"] - plain["success"], 4)
        r["score_vs_plain"] = round(r["score"] - plain["score"], 4)
    result = {"task": train_cfg.task.name, "checkpoint": str(cfg.checkpoint), "train_steps": meta["step"],
              "episodes": int(cfg.eval.episodes), "seed": int(cfg.eval.seed), "rows": rows,
              "plot": str(plot(rows, out_dir / "success_vs_ms.png", f"{train_cfg.task.name}: search vs steps"))}
    text = (f"{table(rows)}\n\nTask {result['task']} (checkpoint step {meta['step']}), {cfg.eval.episodes} episodes "
            f"per row from seed {cfg.eval.seed}; ms per chunk at batch 1 (median of {cfg.timing_calls}, rows "
            "interleaved; the oracle's simulated lookahead not timed); 'vs K=1' against the plain policy. "
            f"Plot: {result['plot']}")
    write_results(out_dir, result, text)
    return result
