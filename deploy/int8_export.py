"""An export's 8-bit denoiser and the sampling steps it may run (``cadence export int8=true``).

Batch-1 sampling on a CPU is memory-bound: every denoiser call reads all the weights. The int8
graph holds them in 8 bits (ONNX Runtime ``MatMulNBits``, symmetric blocks of 32 along the input,
int8 activations: ``accuracy_level`` 4), so a call reads a quarter of the bytes. Its error is not
the same at every step: a deviation at the first, noisiest step is amplified by every later one,
at the last step it is not (measured on PushT's image UNet: int8 at step 0 alone moves the chunk
by 2.7% of the action range, at step 9 alone by 0.03%). So the quantized graph runs only the
*last* ``j`` sampling steps, and ``j`` is fitted per step count (Q-Sched's idea of adjusting the
sampler rather than the weights): the largest ``j`` whose chunks stay within ``max_error`` of the
action range of the fp32 export's, over calibration windows and their start noises (maximum over
every action, window and noise). ``policy.json`` records ``int8.last_steps``; the
``onnx-cpu-int8`` runtime runs it, and the latency budget weighs it like any other kind.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from cadence.policies.policy import Policy
from tqdm.auto import tqdm

from .budget import action_range
from .convs_as_matmul import convs_as_matmul
from .exported_policy import (DENOISER_INPUTS, INT8_FILE, INT8_GRAPH, ExportedPolicy, build_process, load_exported,
                              read_spec, write_spec)
from .onnx_export import (CHECK_BATCH, PARITY_TOLERANCE, TRACE_BATCH, ExportError, denoiser_inputs, export_graph,
                          max_abs_err)
from .onnx_providers import create_session

BITS, BLOCK, ACCURACY_LEVEL = 8, 32, 4
CALIBRATION_WINDOWS = 32    # what `cadence export int8=true` fits on
MAX_ERROR = 0.005       # default: the 0.5%-of-range bound `cadence bench peer` holds an accurate runtime to


@contextlib.contextmanager
def _quiet_quantizer():
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def quantize_matmuls(src: Path, dst: Path) -> None:
    """``src``'s constant-weight MatMuls as 8-bit ``MatMulNBits`` (block 32, int8 compute) -> ``dst``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                          bits=BITS)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    with _quiet_quantizer():
        quantizer.process()
    tmp = dst.with_name(dst.name + ".tmp")
    quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    tmp.replace(dst)


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
    """The largest ``j`` such that running the int8 graph for the last ``j`` of ``steps`` sampling
    steps keeps every action of every calibration chunk within ``max_error`` x the action range of
    the fp32 chunk with the same start noise. Bisection, which takes the error to grow with ``j``
    (it need not strictly): the answer holds and ``j + 1`` does not."""
    denoiser = policy.denoiser
    policy.process = policy.process.with_steps(steps)
    rng = np.random.default_rng(seed)
    noises = [rng.standard_normal((1, policy.pred_horizon, policy.action_dim)).astype(np.float32) for _ in windows]
    bound = max_error * action_range(policy)

    def within(j: int) -> bool:
        denoiser.first_int8 = steps - j
        return max(float(e.max()) for e in chunk_errors(policy, windows, noises, references)) <= bound

    denoiser.first_int8 = steps + 1
    references = chunk_errors(policy, windows, noises)
    good, bad = 0, steps + 1            # within(good) holds (j = 0 is the fp32 chunk); bad: the first j known not to
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if within(mid) else (good, mid)
    return good


def check_int8_options(process, steps: Sequence[int] | None, max_error: float, windows: int) -> list[int]:
    """The step counts to fit (default the process's own), sorted; :class:`ExportError` naming the
    option for a stateful process (streaming), no calibration window, a bound outside (0, 1) or a
    count the process cannot sample with."""
    if process.keeps_state:
        raise ExportError(f"int8: the {process.name} process keeps state from chunk to chunk; the int8 fit measures "
                          "single chunks, so it is not offered for it")
    if windows < 1:
        raise ExportError(f"calibration: the int8 fit needs at least one observation window, got {windows}")
    if not 0 < max_error < 1:
        raise ExportError(f"int8_max_error: a fraction of the action range in (0, 1), got {max_error}")
    steps = sorted({int(s) for s in steps} if steps else {int(process.sample_steps)})
    for s in steps:
        if not process.allows_steps(s):
            raise ExportError(f"int8_steps: the {process.name} process cannot sample with {s} steps")
    return steps


def export_int8(policy: Policy, out_dir: str | Path, windows: Sequence[Mapping[str, np.ndarray]],
                steps: Sequence[int] | None = None, max_error: float = MAX_ERROR, threads: int | None = None,
                opset: int = 18, echo: Callable[[str], None] | None = print) -> dict:
    """Add ``denoiser_int8.onnx`` and its fitted ``int8`` entry to the export in ``out_dir`` (written
    by :func:`export_policy_onnx` from ``policy``); ``windows``: calibration observations, each key
    (1, To, ...); ``steps``: the step counts to fit (default the export's own). Returns the entry."""
    out = Path(out_dir)
    spec = read_spec(out)
    process = build_process(spec["process"])
    steps = check_int8_options(process, steps, max_error, len(windows))
    net = convs_as_matmul(copy.deepcopy(policy.denoiser).cpu().float().eval())
    gen = torch.Generator().manual_seed(0)
    dims = (spec["pred_horizon"], spec["action_dim"], spec["cond_dim"])
    trace = tuple(denoiser_inputs(process, *dims, TRACE_BATCH, gen).values())
    check = denoiser_inputs(process, *dims, CHECK_BATCH, gen)
    outputs = spec["graphs"]["denoiser"]["outputs"]
    fp32_file = out / (INT8_FILE + ".fp32")
    try:
        with torch.no_grad():
            export_graph(net, trace, fp32_file, DENOISER_INPUTS, outputs, opset)
            reference = net(*check.values())
        reference = reference if isinstance(reference, tuple) else (reference,)
        error = max_abs_err(create_session(fp32_file, "cpu"), check, reference, outputs)
        scale = max([1.0, *(float(r.abs().max()) for r in reference)])
        if not error <= PARITY_TOLERANCE * scale:
            raise ExportError(f"{fp32_file}: the MatMul form differs from PyTorch by {error:.3g}; no int8 graph")
        quantize_matmuls(fp32_file, out / INT8_FILE)
    finally:
        fp32_file.unlink(missing_ok=True)
    spec["graphs"][INT8_GRAPH] = {"file": INT8_FILE, "inputs": DENOISER_INPUTS, "outputs": outputs}
    spec["int8"] = {"bits": BITS, "block": BLOCK, "max_error": float(max_error), "windows": len(windows),
                    "last_steps": {}}
    write_spec(out, spec)           # valid with no fitted step count yet: the runtime then refuses every one
    exported = load_exported(out, "cpu", threads, int8=True)
    for s in tqdm(steps, desc="fitting int8 steps", disable=echo is None):
        spec["int8"]["last_steps"][str(s)] = fit_last_steps(exported, windows, s, max_error)
    write_spec(out, spec)
    if echo is not None:
        size = (out / INT8_FILE).stat().st_size / 2 ** 20
        fits = ", ".join(f"last {j} of {s}" for s, j in spec["int8"]["last_steps"].items())
        echo(f"wrote {out / INT8_FILE} ({size:.0f} MiB); int8 runs {fits} steps "
             f"(max error {max_error:.2%} of the action range on {len(windows)} windows)")
    return spec["int8"]
