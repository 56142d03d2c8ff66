"""``cadence export checkpoint=RUN format=onnx``: ONNX graphs for the encoder and one denoiser call,
plus ``policy.json`` (sampling schedule, normaliser); the sampling loop runs on the host."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from cadence.cache_file import weights_sha256
from cadence.checkpoint import load_policy, resolve_checkpoint_dir

def export_control(train_cfg) -> dict | None:
    """``policy.json``'s ``control``: the rate a policy was trained at and its execution horizon."""
    fps = train_cfg.task.get("fps")
    return {"fps": float(fps), "exec_horizon": int(train_cfg.policy.exec_horizon)} if fps else None


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, opset: int = 18,
                echo: Callable[[str], None] | None = print, precond: bool = True) -> Path:
    """Export a checkpoint folder (or a run folder holding ``checkpoint/``) to ``out_dir``."""
    from cadence.deploy.onnx_export import export_policy_onnx
    ckpt = resolve_checkpoint_dir(checkpoint)
    policy, cfg, meta = load_policy(ckpt, device="cpu")
    return export_policy_onnx(policy, out_dir, source=str(ckpt), obs_shapes=meta["obs_shapes"],
                              step=meta.get("step"), weights_sha256=weights_sha256(ckpt), opset=opset,
                              control=export_control(cfg), echo=echo, precond=precond)


def run(cfg: DictConfig) -> Path:
    """The only format is ONNX; the schema refuses any other (``ExportFormat``)."""
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    out = Path(cfg.out_dir or ckpt.parent / "export-onnx")
    path = export_onnx(ckpt, out, opset=cfg.opset, precond=cfg.precond)
    print(f"exported {ckpt} -> {path}")
    return path
