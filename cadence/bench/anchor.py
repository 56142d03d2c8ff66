"""``cadence bench anchor``: truncated anchor diffusion against a DDIM diffusion policy.

One run, one task, the same demonstrations and evaluation seeds. Two policies are trained (or
loaded): the truncated anchor policy (``policy=anchor``: K-means anchors, cascade decoder) and
the standard diffusion policy (``policy=diffusion``: 1-D UNet, DDPM-100). Rows: the anchor
policy at each of ``anchor_steps`` sampling steps choosing the most confident mode, at each of
``sampled_steps`` drawing the mode by confidence, and the diffusion policy at each of
``ddim_steps`` DDIM steps.

Per row: denoiser calls per chunk, milliseconds per chunk at batch 1 (median, the rows timed
round-robin so machine noise hits all alike), speedup and success change against the
reference row (the diffusion policy at its most steps), success rate, score (mean largest
reward: PushT's paper metric), the modes the successful episodes took (the default task's
left / right: mode coverage), and for anchor rows the top-1 anchor accuracy (the most
confident mode is the anchor nearest the demonstrated chunk) on training windows. ``results.json`` and ``results.md`` are written to ``out_dir``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from cadence.bench.common import write_results
from cadence.bench.pair import RowSpec, compare, footer, load_trained, measure_rows, mode_text, result_header, variant
from cadence.device import resolve_device
from cadence.markdown_table import markdown_table
from cadence.policies.processes.truncated_anchor import nearest_anchor
from cadence.training_data import load_windows

log = logging.getLogger(__name__)

COLUMNS = ("policy", "sampler", "denoiser calls", "ms / chunk", "speedup", "success", "vs ref", "score",
           "modes (left / right)", "anchor top-1")


@torch.no_grad()
def anchor_accuracy(policy, train_cfg, windows: int, seed: int, device) -> float:
    """How often the most confident mode is the anchor nearest the demonstrated chunk."""
    data = load_windows(train_cfg.task, train_cfg.policy.obs_horizon, train_cfg.policy.pred_horizon)
    gen = torch.Generator().manual_seed(seed)
    batch = data.batch(torch.randint(0, len(data), (windows,), generator=gen), device)
    x0 = policy.normalizer.normalize(policy.action_key, batch[policy.action_key].float())
    task = policy.task_kwargs(batch)
    anchors = policy.process.task_anchors(windows, task.get("task"), device)
    cond = policy.encoder(batch, policy.normalizer)
    _, logits = policy.process.predict_modes(policy.denoiser, cond, tuple(x0.shape),
                                             generator=torch.Generator(device=device).manual_seed(seed), **task)
    return float((logits.argmax(dim=1) == nearest_anchor(x0, anchors)).float().mean())


def table(rows: list[dict]) -> str:
    cells = [[r["policy"], r["sampler"], str(r["denoiser_calls"]), f"{r['ms_per_chunk']:.2f}", f"{r['speedup']:.1f}x",
              f"{r['success']:.2f}", f"{r['success_vs_ref']:+.2f}", f"{r['score']:.3f}", mode_text(r["eval"]),
              "-" if r["anchor_top1"] is None else f"{r['anchor_top1']:.2f}"] for r in rows]
    return markdown_table(COLUMNS, cells)


def run(cfg: DictConfig, progress: bool = True) -> dict:
    if not cfg.ddim_steps:
        raise ValueError("ddim_steps must name at least one DDIM step count (the reference row)")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    loaded = load_trained(cfg, out_dir, {"anchor": cfg.anchor_overrides, "diffusion": cfg.diffusion_overrides},
                          device, progress)
    anchor, anchor_cfg, _ = loaded["anchor"]
    diffusion, diffusion_cfg, _ = loaded["diffusion"]
    specs = [RowSpec("anchor", anchor_cfg, variant(anchor, int(s), select="argmax"), f"{int(s)} steps, most confident",
                     int(s), f"anchor-{int(s)}") for s in cfg.anchor_steps]
    specs += [RowSpec("anchor", anchor_cfg, variant(anchor, int(s), select="sample"), f"{int(s)} steps, mode drawn",
                      int(s), f"anchor-{int(s)}-drawn") for s in cfg.sampled_steps]
    specs += [RowSpec("diffusion", diffusion_cfg, variant(diffusion, int(s)), f"DDIM-{int(s)}", int(s),
                      f"ddim-{int(s)}") for s in cfg.ddim_steps]
    rows = measure_rows(specs, cfg, out_dir, device, progress)
    for spec, row in zip(specs, rows):
        row["anchor_top1"] = anchor_accuracy(spec.model, spec.train_cfg, cfg.accuracy_windows, cfg.eval.seed, device) \
            if spec.policy == "anchor" else None
    ref = max((r for r in rows if r["policy"] == "diffusion"), key=lambda r: r["denoiser_calls"])
    compare(rows, ref)
    target = next((r for r in rows if r["policy"] == "anchor" and r["denoiser_calls"] == 2
                   and r["sampler"].endswith("most confident")), None)
    met = None if target is None else bool(target["speedup"] >= 5 and target["success_vs_ref"] >= -0.03)
    result = {**result_header(loaded, ref), "num_anchors": anchor.process.num_anchors, "target_2_steps_met": met,
              "rows": rows}
    verdict = "" if met is None else (
        f"Target (anchor at 2 steps: success within 3 points of {result['reference']}, >= 5x faster): "
        f"{'met' if met else 'NOT met'} ({target['success_vs_ref']:+.2f}, {target['speedup']:.1f}x).")
    text = f"{table(rows)}\n\n{footer(result, cfg, 'chunk', verdict)}"
    write_results(out_dir, result, text)
    return result
