"""Add whole-loop graphs to an export (``cadence export loop_steps=[10]``): see :mod:`.loop_graph`.

For each step count N, the process's ``sample`` at N steps around the policy's denoiser is traced
into ``loop_<N>.onnx`` (torch.export unrolls the Python loop; the weights are stored once, shared
by every step). The graph is checked against PyTorch's own loop at another batch size, with a
known prefix, like every graph of an export; ``policy.json`` lists it under ``graphs.loop_<N>``.
A block cache is left out (as in ``denoiser.onnx``): the graph is the uncached loop.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from cadence.policies.policy import Policy
from cadence.policies.processes import KnownActions
from torch import nn

from .export_spec import read_spec, write_spec
from .loop_graph import LOOP_INPUTS, LOOP_OUTPUTS, MAX_LOOP_STEPS, loop_graph_name
from .onnx_export import CHECK_BATCH, PARITY_TOLERANCE, TRACE_BATCH, ExportError, export_graph, max_abs_err
from .onnx_providers import create_session


class _SamplingLoop(nn.Module):
    """``(cond, noise, known, known_mask) -> x``: the process's whole ``sample`` around the denoiser."""

    def __init__(self, net: nn.Module, process):
        super().__init__()
        self.net, self.process = net, process

    def forward(self, cond, noise, known, known_mask):
        return self.process.sample(self.net, cond, tuple(noise.shape), noise=noise,
                                   known=KnownActions(known, known_mask))


def check_loop_steps(process, steps: Sequence[int]) -> list[int]:
    """The step counts to export, sorted; :class:`ExportError` naming the option for a process
    without a loop graph or a count it cannot sample with or past :data:`MAX_LOOP_STEPS`."""
    if not getattr(process, "loop_graph", False):
        raise ExportError(f"loop_steps: the {process.name} process has no whole-loop graph (its sampling draws "
                          "noise, keeps state or chooses between candidates); its sampling loop runs on the host")
    out = sorted({int(s) for s in steps})
    for s in out:
        if not process.allows_steps(s) or not 1 <= s <= MAX_LOOP_STEPS:
            raise ExportError(f"loop_steps: {s} steps; a loop graph is for 1..{MAX_LOOP_STEPS} steps the "
                              f"{process.name} process can sample with")
    return out


def loop_inputs(batch: int, pred_horizon: int, action_dim: int, cond_dim: int, start: int,
                gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random graph inputs with the first two actions due from ``start`` on known."""
    shape = (batch, pred_horizon, action_dim)
    mask = torch.zeros(pred_horizon, dtype=torch.bool)
    mask[start: start + 2] = True
    return torch.randn(batch, cond_dim, generator=gen), torch.randn(shape, generator=gen), \
        torch.rand(shape, generator=gen) * 2 - 1, mask


def export_loop(policy: Policy, out_dir: str | Path, steps: Sequence[int], opset: int = 18,
                echo: Callable[[str], None] | None = print) -> list[int]:
    """Add ``loop_<N>.onnx`` for each N in ``steps`` to the export in ``out_dir`` (written by
    :func:`export_policy_onnx` from ``policy``); returns the step counts written."""
    out = Path(out_dir)
    spec = read_spec(out)
    steps = check_loop_steps(policy.process, steps)
    net = copy.deepcopy(policy.denoiser).cpu().float().eval()
    if getattr(net, "branch_cache", None) is not None:
        net.branch_cache = None           # the uncached loop, as denoiser.onnx is the uncached call
    gen = torch.Generator().manual_seed(0)
    dims = (spec["pred_horizon"], spec["action_dim"], spec["cond_dim"], spec["obs_horizon"] - 1)
    trace, check = loop_inputs(TRACE_BATCH, *dims, gen), loop_inputs(CHECK_BATCH, *dims, gen)
    for s in steps:
        name = loop_graph_name(s)
        path = out / f"{name}.onnx"
        module = _SamplingLoop(net, policy.process.with_steps(s)).eval()
        started = time.perf_counter()
        with torch.no_grad():
            export_graph(module, trace, path, LOOP_INPUTS, LOOP_OUTPUTS, opset, batched=(True, True, True, False))
            reference = module(*check)
        seconds = time.perf_counter() - started
        error = max_abs_err(create_session(path, "cpu"), dict(zip(LOOP_INPUTS, check)), (reference,), LOOP_OUTPUTS)
        scale = max(1.0, float(reference.abs().max()))
        if not np.isfinite(error) or error > PARITY_TOLERANCE * scale:
            path.unlink(missing_ok=True)
            raise ExportError(f"{path}: ONNX Runtime's loop differs from PyTorch's by {error:.3g} at batch "
                              f"{CHECK_BATCH} (tolerance {PARITY_TOLERANCE * scale:.3g}); not added")
        spec["graphs"][name] = {"file": path.name, "inputs": LOOP_INPUTS, "outputs": LOOP_OUTPUTS}
        spec.setdefault("export_check", {"batch": CHECK_BATCH})[f"{name}_max_abs_err"] = error
        write_spec(out, spec)
        if echo is not None:
            echo(f"wrote {path} ({path.stat().st_size / 2 ** 20:.0f} MiB, {s} steps in one graph, {seconds:.1f} s, "
                 f"max |onnxruntime - torch| {error:.1e})")
    return steps
