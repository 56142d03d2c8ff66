"""``cadence export checkpoint=RUN format=onnx``: ONNX graphs for the encoder and one denoiser call,
plus ``policy.json`` (sampling schedule, normaliser); the sampling loop runs on the host."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from omegaconf import DictConfig

from cadence.cache_file import weights_sha256
from cadence.checkpoint import load_policy, resolve_checkpoint_dir

def export_control(train_cfg) -> dict | None:
    """``policy.json``'s ``control``: the rate a policy was trained at and its execution horizon."""
    fps = train_cfg.task.get("fps")
    return {"fps": float(fps), "exec_horizon": int(train_cfg.policy.exec_horizon)} if fps else None


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, opset: int = 18,
                echo: Callable[[str], None] | None = print, precond: bool = True, int8: Mapping | None = None) -> Path:
    """Export a checkpoint folder (or a run folder holding ``checkpoint/``) to ``out_dir``. ``int8``
    (``steps``, ``max_error``, ``calibration``): also the int8 denoiser, fitted on that many
    observation windows of the checkpoint's training data (see cadence.deploy.int8_export)."""
    from cadence.deploy.int8_export import check_int8_options, export_int8
    from cadence.deploy.onnx_export import export_policy_onnx
    ckpt = resolve_checkpoint_dir(checkpoint)
    policy, cfg, meta = load_policy(ckpt, device="cpu")
    if int8 is not None:        # before anything is written
        check_int8_options(policy.process, int8.get("steps"), float(int8["max_error"]), int(int8["calibration"]))
    export_policy_onnx(policy, out_dir, source=str(ckpt), obs_shapes=meta["obs_shapes"], step=meta.get("step"),
                       weights_sha256=weights_sha256(ckpt), opset=opset, control=export_control(cfg), echo=echo,
                       precond=precond)
    if int8 is not None:
        from cadence.calibration_data import calibration_observations
        windows = calibration_observations(cfg, int(int8["calibration"]))
        export_int8(policy, out_dir, windows, steps=int8.get("steps"), max_error=float(int8["max_error"]),
                    opset=opset, echo=echo)
    return Path(out_dir)


def run(cfg: DictConfig) -> Path:
    """The only format is ONNX; the schema refuses any other (``ExportFormat``)."""
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    out = Path(cfg.out_dir or ckpt.parent / "export-onnx")
    int8 = ({"steps": cfg.int8_steps, "max_error": cfg.int8_max_error, "calibration": cfg.calibration}
            if cfg.int8 else None)
    path = export_onnx(ckpt, out, opset=cfg.opset, precond=cfg.precond, int8=int8)
    print(f"exported {ckpt} -> {path}")
    return path
