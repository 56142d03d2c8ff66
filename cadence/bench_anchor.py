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
left / right: mode coverage), and for anchor rows the top-1 anchor accuracy (the most confident mode is the anchor nearest the demonstrated chunk) on
training windows. ``results.json`` and ``results.md`` are written to ``out_dir``.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from cadence.bench_mode import trained
from cadence.checkpoint import load_policy
from cadence.deploy.budget import interleaved_ms
from cadence.device import resolve_device
from cadence.evaluate import evaluate_policy, first_observation
from cadence.markdown_table import markdown_table
from cadence.policies.processes.sample_steps import with_sample_steps
from cadence.policies.processes.truncated_anchor import nearest_anchor
from cadence.train import load_windows

log = logging.getLogger(__name__)

COLUMNS = ("policy", "sampler", "denoiser calls", "ms / chunk", "speedup", "success", "vs ref", "score",
           "modes (left / right)", "anchor top-1")


def train_configs(cfg: DictConfig, out_dir: Path) -> dict[str, DictConfig]:
    common = [f"task={cfg.task.name}", f"train.steps={cfg.steps}", f"train.batch_size={cfg.batch_size}",
              "train.eval_every=0", "eval.episodes=0"]
    if cfg.threads:
        common.append(f"train.threads={cfg.threads}")
    return {name: hydra.compose(config_name="train", overrides=[f"policy={name}", *common, *extra,
                                                                f"run_dir={out_dir / name}"])
            for name, extra in (("anchor", cfg.anchor_overrides), ("diffusion", cfg.diffusion_overrides))}


def variant(policy, steps: int, select: str | None = None):
    """A copy of ``policy`` sampling with ``steps`` (and, for anchors, choosing by ``select``)."""
    out = copy.deepcopy(policy)
    process = with_sample_steps(policy.process, steps)
    if select is not None:
        process.select = select
    out.process = process
    return out


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


def mode_text(summary: dict) -> str:
    """Successful episodes per side of the default task; "-" for tasks that report no mode."""
    counts = summary.get("mode_counts", {})
    if summary.get("n_success", 0) and not sum(counts.values()):
        return "-"
    return f"{counts.get('left', 0)} / {counts.get('right', 0)}"


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
    loaded = {}
    for name, tcfg in train_configs(cfg, out_dir).items():
        ckpt = trained(name, tcfg, cfg.get(f"{name}_checkpoint"), cfg, progress)
        loaded[name] = load_policy(ckpt, device)
    anchor, anchor_cfg, anchor_meta = loaded["anchor"]
    diffusion, diffusion_cfg, diffusion_meta = loaded["diffusion"]
    # (policy name, its train config, the policy variant, sampler label, denoiser calls, eval folder)
    specs = [("anchor", anchor_cfg, variant(anchor, int(s), "argmax"), f"{int(s)} steps, most confident", int(s),
              f"anchor-{int(s)}") for s in cfg.anchor_steps]
    specs += [("anchor", anchor_cfg, variant(anchor, int(s), "sample"), f"{int(s)} steps, mode drawn", int(s),
               f"anchor-{int(s)}-drawn") for s in cfg.sampled_steps]
    specs += [("diffusion", diffusion_cfg, variant(diffusion, int(s)), f"DDIM-{int(s)}", int(s), f"ddim-{int(s)}")
              for s in cfg.ddim_steps]
    obs = first_observation(anchor_cfg.task, anchor_cfg.policy.obs_horizon, cfg.eval.seed, device)
    for spec in specs:
        spec[2].eval()
    with torch.no_grad():
        ms = interleaved_ms([spec[2] for spec in specs], obs, cfg.timing_calls)
    rows = []
    for (name, tcfg, policy, sampler, calls, folder), t in zip(specs, ms):
        summary, _ = evaluate_policy(policy, tcfg.task, tcfg.policy, cfg.eval, out_dir / f"eval-{folder}",
                                     device, progress=progress, title=f"{name} {sampler}")
        accuracy = anchor_accuracy(policy, tcfg, cfg.accuracy_windows, cfg.eval.seed, device) \
            if name == "anchor" else None
        rows.append({"policy": name, "sampler": sampler, "denoiser_calls": calls, "ms_per_chunk": round(t, 3),
                     "success": summary["success_rate"], "score": summary.get("mean_max_reward", 0.0),
                     "episodes": summary["n_episodes"], "anchor_top1": accuracy,
                     "eval": summary})
    ref = max((r for r in rows if r["policy"] == "diffusion"), key=lambda r: r["denoiser_calls"])
    for r in rows:
        r["speedup"] = round(ref["ms_per_chunk"] / r["ms_per_chunk"], 2)
        r["success_vs_ref"] = round(r["success"] - ref["success"], 4)
    target = next((r for r in rows if r["policy"] == "anchor" and r["denoiser_calls"] == 2
                   and r["sampler"].endswith("most confident")), None)
    met = None if target is None else bool(target["speedup"] >= 5 and target["success_vs_ref"] >= -0.03)
    result = {"task": anchor_cfg.task.name, "reference": f"diffusion {ref['sampler']}",
              "train_steps": {"anchor": anchor_meta["step"], "diffusion": diffusion_meta["step"]},
              "train_seconds": {"anchor": anchor_meta.get("train_seconds"),
                                "diffusion": diffusion_meta.get("train_seconds")},
              "num_anchors": anchor.process.num_anchors, "target_2_steps_met": met, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    verdict = "" if met is None else (
        f"\n\nTarget (anchor at 2 steps: success within 3 points of {result['reference']}, >= 5x faster): "
        f"{'met' if met else 'NOT met'} ({target['success_vs_ref']:+.2f}, {target['speedup']:.1f}x).")
    text = (f"{table(rows)}\n\nTask {result['task']}, {cfg.eval.episodes} episodes per row from seed {cfg.eval.seed}; "
            f"ms per chunk at batch 1 (median of {cfg.timing_calls}); speedup and 'vs ref' against "
            f"{result['reference']}.{verdict}")
    (out_dir / "results.md").write_text(text + "\n")
    print("\n" + text + f"\n\nresults: {out_dir / 'results.json'}")
    return result
