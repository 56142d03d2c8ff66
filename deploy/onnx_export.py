"""Export a policy to ONNX: the observation encoder and ONE denoiser call; sampling stays on the host.

``encoder.onnx``   inputs: the observation keys in sorted order, each (B, To, ...) in task units
                   (uint8 images stay uint8); normalisation is inside. Output ``cond`` (B, Dc).
``denoiser.onnx``  inputs ``x`` (B, Tp, Da) float32, ``level`` (B,) float32, ``cond`` (B, Dc);
                   output ``out`` (B, Tp, Da). Streaming diffusion: ``level`` is (B, Tp), one per
                   action. Truncated anchor diffusion: ``x`` (B, K, Tp, Da), all
                   the noisy anchors; outputs ``out`` (B, K, Tp, Da) and ``logits`` (B, K). The anchors
                   themselves are in policy.json; noising, stepping and choosing the mode run on the host.
``policy.json``    everything else the host needs (see :mod:`cadence.deploy.export_spec`).

A block cache (BAC / uniform schedules from ``cadence cache``) is not exported: the denoiser
graph is one stateless call, and reusing residual branches across calls needs state inside
it. The graph is the uncached denoiser -- exact parity with the uncached PyTorch policy --
and policy.json says so under ``block_cache``; block caching runs in the torch-* runtimes.

The batch dimension is dynamic everywhere. Each graph is checked with ``onnx.checker`` and
run once in ONNX Runtime (CPU) against PyTorch at a batch size other than the traced one;
the largest difference is printed and stored under ``export_check`` in policy.json, and a
difference that is not finite or above ``PARITY_TOLERANCE`` fails the export.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from cadence.policies.policy import Policy
from torch import nn

from cadence.datasets.window_dataset import is_image_shape

from .export_spec import (
    DENOISER_FILE,
    DENOISER_INPUTS,
    ENCODER_FILE,
    ENCODER_OUTPUTS,
    FORMAT_VERSION,
    PRECOND_GRAPHS,
    SPEC_FILE,
    process_spec,
    write_spec,
)
from .onnx_providers import create_session

from cadence.errors import CadenceError
from cadence.untrusted import LIMITS

TRACE_BATCH, CHECK_BATCH = 2, 3     # trace at one batch size, check at another: proves the batch is dynamic
MIN_TORCH = "2.6"                   # torch.onnx.export(dynamo=True, dynamic_shapes=..., external_data=...)
BLOCK_CACHE_NOTE = ("the checkpoint's block cache (cadence cache) is not in the ONNX graphs: they run the uncached "
                    "denoiser, exactly; use a torch-* runtime for block caching")
PARITY_TOLERANCE = 1e-3             # ONNX Runtime may differ from PyTorch by this much (x the output's scale)


class ExportError(CadenceError, RuntimeError):
    """The policy could not be exported, or the exported graph does not reproduce it."""


class _EncoderGraph(nn.Module):
    """The observation encoder with the normalizer folded in, taking the keys positionally (sorted)."""

    def __init__(self, policy: Policy, keys: Sequence[str]):
        super().__init__()
        self.encoder, self.normalizer, self.keys = policy.encoder, policy.normalizer, list(keys)

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(dict(zip(self.keys, obs)), self.normalizer)


class _LevelTerms(nn.Module):
    """A UNet's FiLM terms of the levels (S,) -> (S, film_dim)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return self.net.level_terms(level)


class _CondTerms(_LevelTerms):
    """A UNet's FiLM terms of the conditioning (B, Dc) -> (B, film_dim)."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net.cond_terms(cond)


class _Modulated(_LevelTerms):
    """A UNet given its blocks' FiLM outputs: (x (B, Tp, Da), film (B, film_dim)) -> (B, Tp, Da)."""

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return self.net.modulated(x, film)


def _precond_graphs(policy: Policy, process, trace_den: tuple, check_den: dict, check_out: tuple) -> list[tuple]:
    """The precomputed-conditioning graphs of a UNet denoiser (none for other networks, per-action
    levels, or a FiLM width past the limits)."""
    net = policy.denoiser
    if not hasattr(net, "film_dim") or process.level_per_action or net.film_dim > LIMITS["width"]:
        return []
    x, level, cond = trace_den
    level_terms, cond_terms = net.level_terms(check_den["level"]), net.cond_terms(check_den["cond"])
    module_args_feeds_refs = {
        "film_level": (_LevelTerms(net), (level,), {"level": check_den["level"]}, (level_terms,)),
        "film_cond": (_CondTerms(net), (cond,), {"cond": check_den["cond"]}, (cond_terms,)),
        "denoiser_film": (_Modulated(net), (x, net.level_terms(level) + net.cond_terms(cond)),
                          {"x": check_den["x"], "film": level_terms + cond_terms}, check_out)}
    return [(name, file, *module_args_feeds_refs[name][:2], inputs, outputs or list(process.graph_outputs),
             *module_args_feeds_refs[name][2:]) for name, (file, inputs, outputs) in PRECOND_GRAPHS.items()]


@contextlib.contextmanager
def _quiet():
    """Silence torch.onnx's progress prints, warnings and registry log lines during one export."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")   # onnx_ir: optimizer passes
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_names: list[str], opset: int, batched: Sequence[bool] | None = None,
                  dims: Sequence[Mapping[int, str]] | None = None) -> None:
    """``batched``: which inputs have the (dynamic) batch as dimension 0; default all. ``dims``
    instead: each input's dynamic dimensions by name (one name, one size across inputs)."""
    if dims is None:
        dims = [{0: "batch"} if b else {} for b in (batched or [True] * len(args))]
    named = {name: torch.export.Dim(name, min=1) for d in dims for name in d.values()}
    dynamic: tuple = tuple({axis: named[name] for axis, name in d.items()} for d in dims)
    if isinstance(module, _EncoderGraph):
        dynamic = (dynamic,)        # forward(*obs): one varargs parameter
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _quiet():
            torch.onnx.export(module, args, str(tmp), dynamo=True, input_names=input_names, output_names=output_names,
                              dynamic_shapes=dynamic, opset_version=opset, external_data=False, verbose=False)
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path.name}: export failed: {type(exc).__name__}: {exc}") from exc
    tmp.replace(path)


def denoiser_inputs(process, pred_horizon: int, action_dim: int, cond_dim: int, batch: int,
                    gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs for one denoiser call: x, level (within the process's range), cond."""
    level_shape = (pred_horizon,) if process.level_per_action else ()      # streaming: a level per action
    return {"x": torch.randn(batch, *process.graph_chunk(pred_horizon, action_dim), generator=gen),
            "level": torch.rand(batch, *level_shape, generator=gen) * process.level_range(),
            "cond": torch.randn(batch, cond_dim + process.extra_cond_dim, generator=gen)}


def _example_obs(obs_shapes: Mapping[str, Sequence[int]], batch: int, obs_horizon: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    obs = {}
    for key in sorted(obs_shapes):
        shape = (batch, obs_horizon, *obs_shapes[key])
        if _obs_dtype(obs_shapes[key]) == "uint8":
            obs[key] = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        else:
            obs[key] = torch.randn(shape, generator=generator)
    return obs


def _obs_dtype(shape: Sequence[int]) -> str:
    return "uint8" if is_image_shape(shape) else "float32"     # images (H, W, 3) are uint8; the rest float32


def max_abs_err(session, feeds: Mapping[str, torch.Tensor], references: Sequence[torch.Tensor],
             outputs: Sequence[str]) -> float:
    got = session.run(list(outputs), {k: v.numpy() for k, v in feeds.items()})
    return max((float(np.max(np.abs(g - r.numpy()))) if g.size else 0.0) for g, r in zip(got, references))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _infer_obs_shapes(policy: Policy) -> dict[str, tuple[int, ...]]:
    encoder = policy.encoder
    if getattr(encoder, "image_keys", None):
        raise ExportError(f"observation shapes are needed for image keys {encoder.image_keys}: pass obs_shapes "
                          "(a checkpoint's meta.json has them)")
    return {k: tuple(policy.normalizer.params(k)[0].shape) for k in encoder.lowdim_keys}


def export_policy_onnx(policy: Policy, out_dir: str | os.PathLike, source: str = "", *,
                       obs_shapes: Mapping[str, Sequence[int]] | None = None, step: int | None = None,
                       weights_sha256: str | None = None, opset: int = 18, control: Mapping | None = None,
                       echo: Callable[[str], None] | None = print, precond: bool = True) -> Path:
    """Write encoder.onnx, denoiser.onnx and policy.json for ``policy`` into ``out_dir``; returns ``out_dir``.

    ``obs_shapes``: per-step shape of each observation key; defaults to ``policy.obs_shapes``
    if the policy has one, else vector shapes are read from the normalizer (image keys then
    need ``obs_shapes``: a checkpoint's meta.json has them). ``weights_sha256``: the hash of the
    weights file exported, recorded so a later run can tell the export still belongs to them.
    ``echo`` gets one line per graph. ``precond``: also the precomputed-conditioning graphs of a
    UNet denoiser (the ``onnx-*-precond`` runtimes; about as many bytes again as ``denoiser.onnx``).
    Raises :class:`ExportError` (and writes no policy.json) when ONNX Runtime does not reproduce
    PyTorch within ``PARITY_TOLERANCE``.
    """
    if torch.__version__ < MIN_TORCH:
        raise ExportError(f"ONNX export needs torch >= {MIN_TORCH} (the dynamo exporter), found {torch.__version__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC_FILE).unlink(missing_ok=True)     # an interrupted re-export must not look complete
    spec_process = process_spec(policy.process)
    obs_shapes = obs_shapes or getattr(policy, "obs_shapes", None) or _infer_obs_shapes(policy)
    obs_shapes = {k: tuple(int(d) for d in s) for k, s in obs_shapes.items()}
    expected = set(getattr(policy.encoder, "lowdim_keys", [])) | set(getattr(policy.encoder, "image_keys", []))
    if expected and set(obs_shapes) != expected:
        raise ExportError(f"obs_shapes has keys {sorted(obs_shapes)}, the policy's encoder takes {sorted(expected)}")
    keys = sorted(obs_shapes)
    policy = copy.deepcopy(policy).cpu().float().eval()
    gen = torch.Generator().manual_seed(0)
    To, Tp, Da = policy.obs_horizon, policy.pred_horizon, policy.action_dim
    process = policy.process
    chunk, den_outputs = process.graph_chunk(Tp, Da), list(process.graph_outputs)

    encoder = _EncoderGraph(policy, keys).eval()
    with torch.no_grad():
        trace_obs = _example_obs(obs_shapes, TRACE_BATCH, To, gen)
        cond_dim = int(encoder(*trace_obs.values()).shape[-1])
        check_obs = _example_obs(obs_shapes, CHECK_BATCH, To, gen)
        check_cond = encoder(*check_obs.values())
        level_max = process.level_range()
        level_shape = (Tp,) if process.level_per_action else ()      # streaming: a level per action
        extra = process.extra_cond_dim        # what the process appends to the encoding (a shortcut's step code)
        trace_den = tuple(denoiser_inputs(process, Tp, Da, cond_dim, TRACE_BATCH, gen).values())
        check_den = {"x": torch.randn(CHECK_BATCH, *chunk, generator=gen),
                     "level": torch.rand(CHECK_BATCH, *level_shape, generator=gen) * level_max,
                     "cond": torch.cat([check_cond, torch.rand(CHECK_BATCH, extra, generator=gen).round()], dim=-1)}
        check_out = policy.denoiser(*check_den.values())
        check_out = check_out if isinstance(check_out, tuple) else (check_out,)

    graphs = [("encoder", ENCODER_FILE, encoder, tuple(trace_obs.values()), keys, ENCODER_OUTPUTS, check_obs,
               (check_cond,)),
              ("denoiser", DENOISER_FILE, policy.denoiser, trace_den, DENOISER_INPUTS, den_outputs, check_den,
               check_out)]
    if precond:
        with torch.no_grad():
            graphs += _precond_graphs(policy, process, trace_den, check_den, check_out)
    errors = {}
    for name, file, module, args, inputs, outputs, feeds, reference in graphs:
        start = time.perf_counter()
        export_graph(module, args, out / file, inputs, outputs, opset)
        seconds = time.perf_counter() - start
        errors[name] = max_abs_err(create_session(out / file, "cpu"), feeds, reference, outputs)
        scale = max([1.0, *(float(r.abs().max()) for r in reference if r.numel())])
        if not np.isfinite(errors[name]) or errors[name] > PARITY_TOLERANCE * scale:
            (out / file).unlink(missing_ok=True)
            raise ExportError(f"{out / file}: ONNX Runtime differs from PyTorch by {errors[name]:.3g} at batch "
                              f"{CHECK_BATCH} (tolerance {PARITY_TOLERANCE * scale:.3g}); nothing was exported")
        if echo is not None:
            echo(f"wrote {out / file} ({(out / file).stat().st_size / 1024:.0f} KiB, {seconds:.1f} s, "
                 f"max |onnxruntime - torch| {errors[name]:.1e})")

    action_scale, action_offset = (t.detach().cpu() for t in policy.normalizer.params(policy.action_key))
    spec: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "process": spec_process,
        "obs": {k: {"shape": list(obs_shapes[k]), "dtype": _obs_dtype(obs_shapes[k])} for k in keys},
        "obs_horizon": To, "pred_horizon": Tp, "action_dim": Da, "action_key": policy.action_key,
        "cond_dim": cond_dim,
        "action_normalizer": {"mode": policy.normalizer.modes[policy.action_key],
                              "scale": action_scale.tolist(), "offset": action_offset.tolist()},
        "graphs": {"encoder": {"file": ENCODER_FILE, "inputs": keys, "outputs": ENCODER_OUTPUTS},
                   "denoiser": {"file": DENOISER_FILE, "inputs": DENOISER_INPUTS, "outputs": den_outputs},
                   **{name: {"file": file, "inputs": inputs, "outputs": outputs}
                      for name, file, _, _, inputs, outputs, _, _ in graphs[2:]}},
        "source": {"checkpoint": str(source), "step": step,
                   **({"weights_sha256": weights_sha256} if weights_sha256 else {})},
        "versions": {"cadence": _version("cadence"), "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxscript": _version("onnxscript"), "opset": opset},
        "export_check": {"batch": CHECK_BATCH, **{f"{name}_max_abs_err": err for name, err in errors.items()}},
    }
    if len(graphs) > 2:
        spec["film_dim"] = int(policy.denoiser.film_dim)
    if control is not None:
        spec["control"] = {"fps": float(control["fps"]), "exec_horizon": int(control["exec_horizon"])}
    cache = getattr(policy.denoiser, "branch_cache", None)
    if cache is not None:
        spec["block_cache"] = {"applied": False, "schedules": [f"{s.method} M={s.budget}, {s.sample_steps} steps"
                                                               for s in cache.schedules],
                               "note": BLOCK_CACHE_NOTE}
        if echo is not None:
            echo(f"note: {BLOCK_CACHE_NOTE}")
    write_spec(out, spec)
    return out
