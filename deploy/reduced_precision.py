"""Reduced-precision denoisers for the last sampling steps (``cadence export int8=true`` /
``fp16=true``) and the fit of how many steps they may run.

A reduced-precision call is cheaper (int8: a quarter of the weight bytes a CPU reads per call;
fp16: half, and a GPU's tensor cores), and its error is not the same at every step: a deviation at
the first, noisiest step is amplified by every later one, at the last step it is not (measured on
PushT's image UNet: int8 at step 0 alone moves the chunk by 2.7% of the action range, at step 9
alone by 0.03%). So the reduced graph runs only the *last* ``j`` sampling steps, and ``j`` is
fitted per step count (Q-Sched's idea of adjusting the sampler rather than the weights): the
largest ``j`` whose chunks stay within ``max_error`` of the action range of the fp32 export's, over
calibration windows and their start noises (maximum over every action, window and noise).
``policy.json`` records ``<precision>.last_steps``; the ``onnx-*-int8`` / ``onnx-*-fp16`` runtimes
run it, and the latency budget weighs them like any other kind.

The precisions (:data:`PRECISIONS`): ``int8`` (:mod:`cadence.deploy.int8_export`: ONNX Runtime's
``MatMulNBits``, the CPU's), ``fp16`` (:mod:`cadence.deploy.fp16_export`: a float16 graph, a
GPU's) and ``int8_qdq`` (:mod:`cadence.deploy.int8_qdq_export`: int8 convolutions in QDQ form,
TensorRT's, calibrated on the denoiser's inputs over the calibration windows). The GPU ones are
fitted on ONNX Runtime's CPU provider by default, whose arithmetic is not a GPU's, so a GPU's own
numbers may differ a little: the budget measures them there.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from cadence.policies.policy import Policy
from tqdm.auto import tqdm

from .budget import action_range
from .convs_as_matmul import convs_as_matmul
from .export_spec import DENOISER_INPUTS, build_process, read_spec, reduced_graph, write_spec
from .exported_policy import ExportedPolicy, load_exported
from .fp16_export import to_fp16
from .int8_export import BITS, BLOCK, quantize_matmuls
from .int8_qdq_export import to_int8_qdq
from .onnx_export import (CHECK_BATCH, PARITY_TOLERANCE, TRACE_BATCH, ExportError, denoiser_inputs, export_graph,
                          max_abs_err)
from .onnx_providers import create_session

CALIBRATION_WINDOWS = 32    # what `cadence export int8=true` fits on
MAX_ERROR = 0.005       # default: the 0.5%-of-range bound `cadence bench peer` holds an accurate runtime to


@dataclass(frozen=True)
class Precision:
    convert: Callable           # (src.onnx, dst.onnx[, feeds]) -> None
    network: Callable = lambda net: net     # the fp32 network exported before converting
    fields: dict = field(default_factory=dict)   # the entry's fields besides the fit
    calibrated: bool = False    # convert also takes the denoiser's inputs on the calibration windows


PRECISIONS = {"int8": Precision(quantize_matmuls, convs_as_matmul, {"bits": BITS, "block": BLOCK}),
              "fp16": Precision(to_fp16),
              "int8_qdq": Precision(to_int8_qdq, calibrated=True)}


class _Recorded:
    """An ONNX Runtime session that keeps a copy of every feed it runs."""

    def __init__(self, session):
        self.session, self.feeds = session, []

    def run(self, outputs, feeds):
        self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.session.run(outputs, feeds)


def denoiser_feeds(out: Path, windows: Sequence[Mapping[str, np.ndarray]], steps: Sequence[int],
                   seed: int = 0) -> list[dict]:
    """The fp32 denoiser's inputs at every sampling step of each window's chunk (start noises as in
    :func:`fit_last_steps`), for each step count."""
    policy = load_exported(out, "cpu")
    recorded = policy.denoiser.session = _Recorded(policy.denoiser.session)
    for s in steps:
        policy.process = policy.process.with_steps(s)
        rng = np.random.default_rng(seed)
        noises = [rng.standard_normal((1, policy.pred_horizon, policy.action_dim)).astype(np.float32) for _ in windows]
        chunk_errors(policy, windows, noises)
    return recorded.feeds


def chunk_errors(policy: ExportedPolicy, windows: Sequence[Mapping[str, np.ndarray]], noises: Sequence[np.ndarray],
                 references: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """The chunk for each (window, noise), each from a fresh episode (a stateful policy is reset);
    its absolute difference from ``references`` when given."""
    out = []
    with torch.no_grad():
        for i, (obs, noise) in enumerate(zip(windows, noises)):
            policy.reset()
            chunk = policy.predict_chunk({k: torch.from_numpy(np.asarray(v)) for k, v in obs.items()},
                                         noise=torch.from_numpy(noise)).actions.numpy()
            out.append(chunk if references is None else np.abs(chunk - references[i]))
    return out


def fit_last_steps(policy: ExportedPolicy, windows: Sequence[Mapping[str, np.ndarray]], steps: int,
                   max_error: float, seed: int = 0) -> int:
    """The largest ``j`` such that running the reduced graph for the last ``j`` of ``steps`` sampling
    steps keeps every action of every calibration chunk within ``max_error`` x the action range of
    the fp32 chunk with the same start noise (a non-finite action is never within). Bisection, which
    takes the error to grow with ``j`` (it need not strictly): the answer holds and ``j + 1`` does not."""
    denoiser = policy.denoiser
    policy.process = policy.process.with_steps(steps)
    rng = np.random.default_rng(seed)
    noises = [rng.standard_normal((1, policy.pred_horizon, policy.action_dim)).astype(np.float32) for _ in windows]
    bound = max_error * action_range(policy)

    def within(j: int) -> bool:
        denoiser.first_reduced = steps - j
        return max(float(e.max()) for e in chunk_errors(policy, windows, noises, references)) <= bound

    denoiser.first_reduced = steps + 1
    references = chunk_errors(policy, windows, noises)
    good, bad = 0, steps + 1            # within(good) holds (j = 0 is the fp32 chunk); bad: the first j known not to
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if within(mid) else (good, mid)
    return good


def check_reduced_options(process, precision: str, steps: Sequence[int] | None, max_error: float,
                          windows: int) -> list[int]:
    """The step counts to fit (default the process's own), sorted; :class:`ExportError` naming the
    option for an unknown precision, a stateful process (streaming), no calibration window, a bound
    outside (0, 1) or a count the process cannot sample with."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision: one of {sorted(PRECISIONS)}, got {precision!r}")
    if process.keeps_state:
        raise ExportError(f"{precision}: the {process.name} process keeps state from chunk to chunk; the fit "
                          "measures single chunks, so it is not offered for it")
    if windows < 1:
        raise ExportError(f"calibration: the {precision} fit needs at least one observation window, got {windows}")
    if not 0 < max_error < 1:
        raise ExportError(f"{precision}_max_error: a fraction of the action range in (0, 1), got {max_error}")
    steps = sorted({int(s) for s in steps} if steps else {int(process.sample_steps)})
    for s in steps:
        if not process.allows_steps(s):
            raise ExportError(f"{precision}_steps: the {process.name} process cannot sample with {s} steps")
    return steps


def export_reduced(policy: Policy, out_dir: str | Path, precision: str, windows: Sequence[Mapping[str, np.ndarray]],
                   steps: Sequence[int] | None = None, max_error: float = MAX_ERROR, threads: int | None = None,
                   opset: int = 18, provider: str = "cpu", echo: Callable[[str], None] | None = print) -> dict:
    """Add ``denoiser_<precision>.onnx`` and its fitted entry to the export in ``out_dir`` (written
    by :func:`export_policy_onnx` from ``policy``); ``windows``: calibration observations, each key
    (1, To, ...); ``steps``: the step counts to fit (default the export's own); ``provider``: where the
    fit runs the graphs. Returns the entry."""
    out = Path(out_dir)
    spec = read_spec(out)
    process = build_process(spec["process"])
    steps = check_reduced_options(process, precision, steps, max_error, len(windows))
    kind = PRECISIONS[precision]
    net = kind.network(copy.deepcopy(policy.denoiser).cpu().float().eval())
    gen = torch.Generator().manual_seed(0)
    dims = (spec["pred_horizon"], spec["action_dim"], spec["cond_dim"])
    trace = tuple(denoiser_inputs(process, *dims, TRACE_BATCH, gen).values())
    check = denoiser_inputs(process, *dims, CHECK_BATCH, gen)
    outputs = spec["graphs"]["denoiser"]["outputs"]
    graph, file = reduced_graph(precision), f"{reduced_graph(precision)}.onnx"
    fp32_file = out / (file + ".fp32")
    try:
        with torch.no_grad():
            export_graph(net, trace, fp32_file, DENOISER_INPUTS, outputs, opset)
            reference = net(*check.values())
        reference = reference if isinstance(reference, tuple) else (reference,)
        error = max_abs_err(create_session(fp32_file, "cpu"), check, reference, outputs)
        scale = max([1.0, *(float(r.abs().max()) for r in reference)])
        if not error <= PARITY_TOLERANCE * scale:
            raise ExportError(f"{fp32_file}: the graph to convert differs from PyTorch by {error:.3g}; "
                              f"no {precision} graph")
        if kind.calibrated:
            kind.convert(fp32_file, out / file, denoiser_feeds(out, windows, steps))
        else:
            kind.convert(fp32_file, out / file)
    finally:
        fp32_file.unlink(missing_ok=True)
    spec["graphs"][graph] = {"file": file, "inputs": DENOISER_INPUTS, "outputs": outputs}
    spec[precision] = {**kind.fields, "max_error": float(max_error), "windows": len(windows), "last_steps": {}}
    write_spec(out, spec)           # valid with no fitted step count yet: the runtime then refuses every one
    exported = load_exported(out, provider, threads, precision=precision)
    for s in tqdm(steps, desc=f"fitting {precision} steps", disable=echo is None):
        spec[precision]["last_steps"][str(s)] = fit_last_steps(exported, windows, s, max_error)
    write_spec(out, spec)
    if echo is not None:
        size = (out / file).stat().st_size / 2 ** 20
        fits = ", ".join(f"last {j} of {s}" for s, j in spec[precision]["last_steps"].items())
        echo(f"wrote {out / file} ({size:.0f} MiB); {precision} runs {fits} steps "
             f"(max error {max_error:.2%} of the action range on {len(windows)} windows)")
    return spec[precision]
