"""``cadence export checkpoint=RUN format=onnx``: ONNX graphs for the encoder and one denoiser call,
plus ``policy.json`` (sampling schedule, normaliser); the sampling loop runs on the host."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cadence.checkpoint import CheckpointError, resolve_checkpoint_dir

FORMATS = ("onnx",)


def run(cfg: DictConfig) -> Path:
    if cfg.format not in FORMATS:
        raise CheckpointError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    from cadence.deploy.onnx_export import export_onnx
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    out = Path(cfg.out_dir or ckpt.parent / "export-onnx")
    path = export_onnx(ckpt, out, opset=cfg.opset)
    print(f"exported {ckpt} -> {path}")
    return path
