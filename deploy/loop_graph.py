"""The whole sampling loop as one ONNX graph: running it (``onnx-cpu-loop``, ``onnx-cuda-loop``).

``loop_<N>.onnx`` (written by :mod:`cadence.deploy.loop_export`) is a process's ``sample`` at N
steps unrolled: every denoiser call, the update between them and the inpainting of known
actions, with the weights stored once. One ``session.run`` per chunk, no Python between steps:
on a GPU there is no host round trip per step (and ONNX Runtime may run the chunk as one CUDA
graph); on a CPU the calls themselves are the time, so it is about as fast as the host loop.

Inputs ``cond`` (B, Dc) the encoder's output, ``noise`` (B, Tp, Da) the start sample, ``known``
(B, Tp, Da) the normalised known actions and ``known_mask`` (Tp,) bool, which of them are known
(all false: none; the graph then computes what ``sample`` without ``known`` computes). Output
``x`` (B, Tp, Da), normalised. Only processes whose ``loop_graph`` is true (a fixed sequence of
tensor operations given those inputs) have one.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

LOOP_INPUTS = ["cond", "noise", "known", "known_mask"]
LOOP_OUTPUTS = ["x"]
MAX_LOOP_STEPS = 32     # an unrolled graph holds a copy of the network's nodes per step; beyond this: host loop


def loop_graph_name(steps: int) -> str:
    return f"loop_{steps}"


def loop_steps_of(graph_name: str) -> int | None:
    """N for a graph named ``loop_<N>`` (N written plainly, 1..MAX_LOOP_STEPS); None for any other name."""
    digits = graph_name.removeprefix("loop_")
    if digits == graph_name or not (digits.isascii() and digits.isdigit()) or digits != str(int(digits)):
        return None
    steps = int(digits)
    return steps if 1 <= steps <= MAX_LOOP_STEPS else None


def loop_step_counts(steps) -> list[int]:
    """Those of ``steps`` a loop graph may be exported for (1..MAX_LOOP_STEPS)."""
    return [int(s) for s in steps if 1 <= int(s) <= MAX_LOOP_STEPS]


def exported_loop_steps(spec) -> list[int]:
    """The step counts a (checked) policy.json has loop graphs for, ascending."""
    return sorted(n for n in map(loop_steps_of, spec["graphs"]) if n is not None)


class OnnxLoop(nn.Module):
    """``forward(cond, noise, known, known_mask) -> x``: one run of a ``loop_<N>`` graph."""

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, cond: torch.Tensor, noise: torch.Tensor, known: torch.Tensor, known_mask: torch.Tensor
                ) -> torch.Tensor:
        feeds = {"cond": _array(cond, np.float32), "noise": _array(noise, np.float32),
                 "known": _array(known, np.float32), "known_mask": _array(known_mask, np.bool_)}
        (x,) = self.session.run(LOOP_OUTPUTS, feeds)
        return torch.from_numpy(x).to(noise.device)


def _array(t: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


class LoopSampled:
    """A process whose ``sample`` is one run of a whole-loop graph (the ``net`` passed in: an
    :class:`OnnxLoop`, or torch-cudagraph-loop's captured loop), at the graph's step count only.
    The start noise is drawn as the process draws it, so a seeded generator gives the same chunk as
    the host loop. Everything else (``levels``, ``spec``, ``reset`` ...) is the process's own."""

    def __init__(self, process, steps: int):
        if not getattr(process, "loop_graph", False):
            raise ValueError(f"process {process.name!r} has no loop graph (its sampling is not a fixed sequence "
                             "of tensor operations)")
        self.inner = process.with_steps(steps)
        self.steps = steps

    def __getattr__(self, name):
        if name == "inner":             # during copy/unpickle, before __init__ ran
            raise AttributeError(name)
        return getattr(self.inner, name)

    def with_steps(self, steps: int | None):
        if steps is not None and steps != self.steps:
            raise ValueError(f"the loop graph samples with {self.steps} steps, not {steps} (each step count is its "
                             f"own graph: cadence export loop_steps=[{steps}])")
        return copy.copy(self)

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known=None) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator, device=cond.device) if noise is None else noise
        if known is None:
            values, mask = torch.zeros(shape), torch.zeros(shape[1], dtype=torch.bool)
        else:
            values, mask = known.values, known.mask
        return net(cond, noise, values, mask)
