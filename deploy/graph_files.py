"""Opening an export's ONNX graph files, which come from elsewhere like the rest of the export.

A graph must be a plain file inside the export folder, within the size limit, a valid ONNX model
whose weights are all inside it (external data could name any file on the machine), and its
inputs and outputs must be the ones ``policy.json`` names, with the sizes it states. Any failure
is an :class:`ExportFormatError` naming the file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from cadence.untrusted import LIMITS, UntrustedFileError, inside

from .onnx_providers import create_session


def open_graph(export_dir: Path, spec_path: Path, name: str, graph: Mapping, shapes: Mapping[str, Sequence[int]],
               error: type[Exception], provider: str = "auto", threads: int | None = None, spinning: bool = True,
               precision: str | None = None):
    """An ONNX Runtime session for ``graphs.<name>`` of the spec. ``shapes``: the full shape each
    input and output must have, batch first (the batch is not compared)."""
    try:
        path = inside(export_dir, graph["file"], spec_path, f"graphs.{name}.file")
    except UntrustedFileError as exc:
        raise error(str(exc)) from None
    if not path.is_file():
        raise error(f"{spec_path}: 'graphs.{name}.file' names {graph['file']!r}, which is not in {export_dir}")
    size = path.stat().st_size
    if size > LIMITS["weights_bytes"]:
        raise error(f"{path}: {size:,} bytes, more than the {LIMITS['weights_bytes']:,} a graph may have")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:        # protobuf's own errors, whatever their type
        raise error(f"{path}: not a valid ONNX model ({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise error(f"{path}: the graph keeps weights in external files; an export's graphs must hold their own")
    try:
        session = create_session(path, provider, threads, spinning, precision)
    except UnicodeError as exc:     # ONNX Runtime quoting the file's damaged text in its message
        raise error(f"{path}: ONNX Runtime cannot load it (a name or operator in it is not UTF-8 text: "
                    f"{exc.reason})") from None
    except (RuntimeError, ValueError):
        raise                       # the machine or the caller's settings (no GPU for "cuda"), not the file
    except Exception as exc:        # ONNX Runtime's own errors: it refuses the model (bad graph, operator, ...)
        raise error(f"{path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from None
    got_in = {i.name: i.shape for i in session.get_inputs()}
    got_out = {o.name: o.shape for o in session.get_outputs()}
    if sorted(got_in) != sorted(graph["inputs"]) or list(got_out) != list(graph["outputs"]):
        raise error(f"{path}: graph takes {list(got_in)} -> {list(got_out)}, but {spec_path.name} says "
                    f"{graph['inputs']} -> {graph['outputs']}")
    for key, want in shapes.items():
        got = got_in.get(key, got_out.get(key))
        if got is None:
            continue
        fixed = [d if isinstance(d, int) else None for d in got]
        if len(fixed) != len(want) or any(g is not None and g != w for g, w in zip(fixed[1:], want[1:])):
            raise error(f"{path}: '{key}' has shape {got}, but {spec_path.name} implies (batch, {', '.join(map(str, want[1:]))})")
    return session
