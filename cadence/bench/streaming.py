"""``cadence bench streaming``: Streaming Diffusion Policy against the standard diffusion policy.

One run, one task, the same demonstrations and evaluation seeds. Two policies are trained (or
loaded): the streaming policy (``policy=streaming``: the 1-D UNet on per-action noise levels,
a rolling buffer of 20 actions in two chunks) and the diffusion policy (``policy=diffusion``:
the same UNet, DDPM-100). Rows: the streaming policy at each of ``streaming_steps`` denoiser
calls per replan, and the diffusion policy at each of ``ddim_steps`` (100 = the DDPM chain).

Per row: denoiser calls per replan (and for streaming those of an episode's first replan,
which starts the buffer), ms per replan at batch 1 (median over rounds of the rows timed
round-robin; a streaming policy rolls its buffer from round to round, as in a rollout), speedup
and success change against the reference row (the diffusion policy at ``reference_steps``),
success, score and the modes successful episodes took. ``results.json`` and ``results.md`` are
written to ``out_dir``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from cadence.bench.common import write_results
from cadence.bench.pair import RowSpec, compare, footer, load_trained, measure_rows, mode_text, result_header, variant
from cadence.device import resolve_device
from cadence.sim_eval import first_observation
from cadence.markdown_table import markdown_table

COLUMNS = ("policy", "sampler", "calls / replan", "first replan", "ms / replan", "speedup", "success", "vs ref",
           "score", "modes (left / right)")


def sampler_label(steps: int, train_steps: int) -> str:
    return f"DDPM-{steps}" if steps == train_steps else f"DDIM-{steps}"


@torch.no_grad()
def first_replan_calls(policy, train_cfg, seed: int, device) -> int:
    """Denoiser calls of an episode's first replan (a streaming policy starts its buffer)."""
    obs = first_observation(train_cfg.task, train_cfg.policy.obs_horizon, seed, device)
    policy.reset()
    policy.predict_chunk(obs)
    calls = policy.process.calls
    policy.reset()
    return calls


def table(rows: list[dict]) -> str:
    cells = [[r["policy"], r["sampler"], str(r["denoiser_calls"]), str(r["first_replan_calls"]),
              f"{r['ms_per_chunk']:.2f}", f"{r['speedup']:.1f}x", f"{r['success']:.2f}", f"{r['success_vs_ref']:+.2f}",
              f"{r['score']:.3f}", mode_text(r["eval"])] for r in rows]
    return markdown_table(COLUMNS, cells)


def run(cfg: DictConfig, progress: bool = True) -> dict:
    if int(cfg.reference_steps) not in [int(s) for s in cfg.ddim_steps]:
        raise ValueError(f"reference_steps ({cfg.reference_steps}) must be one of ddim_steps {list(cfg.ddim_steps)}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    loaded = load_trained(cfg, out_dir, {"streaming": cfg.streaming_overrides,
                                         "diffusion": cfg.diffusion_overrides}, device, progress)
    streaming, streaming_cfg, _ = loaded["streaming"]
    diffusion, diffusion_cfg, _ = loaded["diffusion"]
    n = diffusion.process.train_steps
    specs = [RowSpec("streaming", streaming_cfg, variant(streaming, int(s)), f"{int(s)} calls per replan", int(s),
                     f"streaming-{int(s)}") for s in cfg.streaming_steps]
    specs += [RowSpec("diffusion", diffusion_cfg, variant(diffusion, int(s)), sampler_label(int(s), n), int(s),
                      f"ddim-{int(s)}") for s in cfg.ddim_steps]
    first = [first_replan_calls(s.model, s.train_cfg, cfg.eval.seed, device) if s.policy == "streaming" else s.calls
             for s in specs]
    rows = measure_rows(specs, cfg, out_dir, device, progress)
    for row, calls in zip(rows, first):
        row["first_replan_calls"] = calls
    ref = next(r for r in rows if r["policy"] == "diffusion" and r["denoiser_calls"] == int(cfg.reference_steps))
    compare(rows, ref)
    few = [r for r in rows if r["policy"] == "streaming" and 5 * r["denoiser_calls"] <= ref["denoiser_calls"]]
    met = None if not few else any(r["success_vs_ref"] >= -0.03 for r in few)
    result = {**result_header(loaded, ref), "chunks": streaming.process.num_chunks, "target_met": met, "rows": rows}
    verdict = "" if met is None else (
        f"Target (at most 1/5 of {result['reference']}'s calls per replan, success within 3 points): "
        f"{'met' if met else 'NOT met'} (" + ", ".join(f"{r['sampler']}: {r['success_vs_ref']:+.2f}" for r in few)
        + ").")
    text = f"{table(rows)}\n\n{footer(result, cfg, 'replan', verdict)}"
    write_results(out_dir, result, text)
    return result
