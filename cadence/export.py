"""``cadence export checkpoint=RUN format=onnx``: ONNX graphs for the encoder and one denoiser call,
plus ``policy.json`` (sampling schedule, normaliser); the sampling loop runs on the host, or, with
``loop_steps=[N]``, also as one graph of the whole loop at N steps."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from cadence.cache_file import weights_sha256
from cadence.checkpoint import load_policy, resolve_checkpoint_dir

def export_control(train_cfg) -> dict | None:
    """``policy.json``'s ``control``: the rate a policy was trained at and its execution horizon."""
    fps = train_cfg.task.get("fps")
    return {"fps": float(fps), "exec_horizon": int(train_cfg.policy.exec_horizon)} if fps else None


def copy_value_verifier(source: Path, out_dir: Path, policy, echo: Callable[[str], None] | None,
                        opset: int = 18) -> None:
    """The run's value verifier (``cadence verifier train``), if it has one, checked against this
    policy and written to ``out_dir/verifier`` with its network as an ONNX graph (``value.onnx``):
    search with ``value`` then runs beside the exported graphs (cadence.deploy.value_graph)."""
    from cadence.deploy.value_graph import export_value_graph
    from cadence.policies.value_verifier import VerifierError, load_value, save_value

    if not (source / "verifier.json").is_file():
        return
    verifier = load_value(source)
    model, plan = verifier.model, policy.pred_horizon - policy.obs_horizon + 1
    if (model.cond_dim, model.plan_steps, model.action_dim) != (getattr(policy.encoder, "out_dim", model.cond_dim), plan, policy.action_dim):
        raise VerifierError(f"{source}: a value verifier for conditioning {model.cond_dim} and plans of "
                            f"{model.plan_steps} x {model.action_dim}, not this policy's")
    info = {k: v for k, v in verifier.info.items() if k != "format" and k not in model.spec()}
    save_value(model, info, out_dir / "verifier")
    export_value_graph(model, out_dir / "verifier", opset)
    if echo:
        echo(f"value verifier -> {out_dir / 'verifier'}")


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, opset: int = 18,
                echo: Callable[[str], None] | None = print, precond: bool = True,
                reduced: Mapping[str, Mapping] | None = None, calibration: int = 32,
                loop_steps: Sequence[int] = ()) -> Path:
    """Export a checkpoint folder (or a run folder holding ``checkpoint/``) to ``out_dir``. ``reduced``
    ({"int8" | "fp16" | "int8_qdq": {"steps", "max_error"}}): also those reduced-precision denoisers, fitted on
    ``calibration`` observation windows of the checkpoint's training data (see
    cadence.deploy.reduced_precision). ``loop_steps``: also the whole sampling loop as one graph at
    each of these step counts (see cadence.deploy.loop_graph)."""
    from cadence.deploy.loop_export import check_loop_steps, export_loop
    from cadence.deploy.onnx_export import export_policy_onnx
    from cadence.deploy.reduced_precision import check_reduced_options, export_reduced
    ckpt = resolve_checkpoint_dir(checkpoint)
    policy, cfg, meta = load_policy(ckpt, device="cpu")
    reduced = dict(reduced or {})
    for precision, options in reduced.items():      # before anything is written
        check_reduced_options(policy.process, precision, options.get("steps"), float(options["max_error"]),
                              calibration)
    if loop_steps:
        check_loop_steps(policy.process, loop_steps)
    export_policy_onnx(policy, out_dir, source=str(ckpt), obs_shapes=meta["obs_shapes"], step=meta.get("step"),
                       weights_sha256=weights_sha256(ckpt), opset=opset, control=export_control(cfg), echo=echo,
                       precond=precond)
    copy_value_verifier(ckpt.parent / "verifier", Path(out_dir), policy, echo, opset)
    if loop_steps:
        export_loop(policy, out_dir, loop_steps, opset=opset, echo=echo)
    if reduced:
        from cadence.calibration_data import calibration_observations
        windows = calibration_observations(cfg, calibration)
        for precision, options in reduced.items():
            export_reduced(policy, out_dir, precision, windows, steps=options.get("steps"),
                           max_error=float(options["max_error"]), opset=opset, echo=echo)
    return Path(out_dir)


def run(cfg: DictConfig) -> Path:
    """The only format is ONNX; the schema refuses any other (``ExportFormat``)."""
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    out = Path(cfg.out_dir or ckpt.parent / "export-onnx")
    reduced = {p: {"steps": cfg[f"{p}_steps"], "max_error": cfg[f"{p}_max_error"]} for p in ("int8", "fp16", "int8_qdq")
               if cfg[p]}
    path = export_onnx(ckpt, out, opset=cfg.opset, precond=cfg.precond, reduced=reduced, calibration=cfg.calibration,
                       loop_steps=list(cfg.loop_steps))
    print(f"exported {ckpt} -> {path}")
    return path
