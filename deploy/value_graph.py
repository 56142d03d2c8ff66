"""The ``value`` search verifier as an ONNX graph, run beside an export's other graphs.

``cadence export`` writes the run's value verifier to ``<export>/verifier/``: ``verifier.json`` and
``model.safetensors`` as ``cadence verifier train`` wrote them, plus ``value.onnx`` (inputs
``cond`` (B, C) and ``plans`` (B, K, P, Da) in task units, output ``scores`` (B, K); B and K free),
checked against the PyTorch network when written. :func:`load_value_graph` opens it on an ONNX
Runtime provider as an :class:`OnnxValueVerifier`, which searches like the PyTorch verifier:
the graph is a file from elsewhere, opened under the same checks as the export's other graphs
(:mod:`cadence.deploy.graph_files`), and ``verifier.json`` is checked by
:func:`~cadence.policies.value_verifier.load_value`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cadence.policies.value_verifier import ChunkValue, ValueVerifier, load_value
from cadence.untrusted import UntrustedFileError, inside

from .export_spec import ExportFormatError
from .graph_files import open_graph
from .onnx_export import ExportError, export_graph

VALUE_GRAPH = "value.onnx"
INPUTS, OUTPUTS = ["cond", "plans"], ["scores"]
TOLERANCE = 1e-4            # the graph's scores against the PyTorch network's, checked when written


def export_value_graph(model: ChunkValue, folder: str | Path, opset: int = 18) -> Path:
    """``folder/value.onnx`` for ``model``, checked against it at a batch and a K other than the traced ones."""
    import onnxruntime as ort

    path = Path(folder) / VALUE_GRAPH
    model = model.eval().cpu()
    gen = torch.Generator().manual_seed(0)

    def inputs(batch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = model.action_low, model.action_high
        plans = low + (high - low) * torch.rand(batch, k, model.plan_steps, model.action_dim, generator=gen)
        return torch.randn(batch, model.cond_dim, generator=gen), plans

    export_graph(model, inputs(2, 3), path, INPUTS, OUTPUTS, opset,
                 dims=[{0: "batch"}, {0: "batch", 1: "candidates"}])
    cond, plans = inputs(3, 5)
    with torch.no_grad():
        want = model(cond, plans).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(OUTPUTS, {"cond": cond.numpy(), "plans": plans.numpy()})
    error = float(np.max(np.abs(got - want)))
    if not error <= TOLERANCE:
        path.unlink()
        raise ExportError(f"{path}: the graph's scores differ from the network's by {error:.2e} (> {TOLERANCE})")
    return path


class OnnxValueVerifier(ValueVerifier):
    """A :class:`ValueVerifier` whose network is an ONNX Runtime session (scores on the host, CPU tensors)."""

    def __init__(self, session, info: dict, model: ChunkValue, folder: str | Path | None = None):
        super().__init__(model, info, folder)
        self.session = session
        self.provider = session.get_providers()[0]

    def score(self, cond: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        feeds = {"cond": np.ascontiguousarray(cond.detach().cpu().numpy(), dtype=np.float32),
                 "plans": np.ascontiguousarray(plans.detach().cpu().numpy(), dtype=np.float32)}
        (scores,) = self.session.run(OUTPUTS, feeds)
        return torch.from_numpy(scores).to(plans.device)


def has_value_graph(folder: str | Path) -> bool:
    return (Path(folder) / VALUE_GRAPH).is_file()


def load_value_graph(folder: str | Path, provider: str = "auto", threads: int | None = None) -> OnnxValueVerifier:
    """The export's value verifier (``<export>/verifier``) on ONNX Runtime; every file checked, errors name it."""
    folder = Path(folder)
    verifier = load_value(folder)               # verifier.json and the weights, checked
    model, spec_path = verifier.model, folder / "verifier.json"
    if not has_value_graph(folder):
        raise ExportFormatError(f"{folder}: no {VALUE_GRAPH} (an export older than the value graph; run "
                                "`cadence export` again)")
    shapes = {"cond": [None, model.cond_dim], "plans": [None, None, model.plan_steps, model.action_dim],
              "scores": [None, None]}
    graph = {"file": VALUE_GRAPH, "inputs": INPUTS, "outputs": OUTPUTS}
    session = open_graph(folder, spec_path, "value", graph, shapes, ExportFormatError, provider, threads,
                         spinning=False)
    return OnnxValueVerifier(session, verifier.info, model, folder)


def for_runtime(verifier, runtime, export_dir: Path | None, threads: int | None = None):
    """The verifier an ONNX ``runtime`` searches with: a value verifier becomes the export's
    ``value.onnx`` (ONNX Runtime's CPU provider beside a CPU runtime, CUDA beside a GPU one) when the
    export's weights are the verifier's; anything else, and PyTorch runtimes, keep ``verifier``."""
    from .onnx_providers import CPU
    from .runtimes import OnnxRuntime

    if not isinstance(verifier, ValueVerifier) or not isinstance(runtime, OnnxRuntime) or export_dir is None:
        return verifier
    try:
        folder = inside(export_dir, "verifier", Path(export_dir) / "verifier", "verifier")  # not a link leading out
    except UntrustedFileError as exc:
        raise ExportFormatError(str(exc)) from None
    if not has_value_graph(folder):
        return verifier
    graph = load_value_graph(folder, "cpu" if runtime.provider == CPU else "cuda", threads)
    mine, theirs = verifier.model.state_dict(), graph.model.state_dict()
    if mine.keys() != theirs.keys() or not all(torch.equal(mine[k].cpu(), theirs[k]) for k in mine):
        return verifier             # budget.value names another verifier than the one the export carries
    return graph
