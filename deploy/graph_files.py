"""Opening an export's ONNX graph files, which come from elsewhere like the rest of the export.

A graph must be a plain file inside the export folder, within the size limit, a valid ONNX model
that holds all its tensors and computes none beyond the limit (:mod:`.graph_checks`), and its
inputs and outputs must be the ones ``policy.json`` names, with the sizes and element types it
states. ONNX Runtime opens the bytes that were checked, not a second read of the file. Any failure
is an :class:`ExportFormatError` naming the file.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from cadence.untrusted import LIMITS, UntrustedFileError, inside, read_bytes

from .graph_checks import check_bounded, check_self_contained
from .onnx_providers import create_session

FLOAT = "tensor(float)"
_SOUND: set[bytes] = set()      # SHA-256 of the graphs this process has checked and found sound: not again


def open_graph(export_dir: Path, spec_path: Path, name: str, graph: Mapping, shapes: Mapping[str, Sequence[int | None]],
               error: type[Exception], provider: str = "auto", threads: int | None = None, spinning: bool = True,
               precision: str | None = None, types: Mapping[str, str] | None = None):
    """An ONNX Runtime session for ``graphs.<name>`` of the spec. ``shapes``: the shape each input
    and output must have, None where a size is free (the batch, a count of levels); ``types``: the
    ONNX element types of those that are not ``tensor(float)``."""
    try:
        path = inside(export_dir, graph["file"], spec_path, f"graphs.{name}.file")
    except UntrustedFileError as exc:
        raise error(str(exc)) from None
    if not path.is_file():
        raise error(f"{spec_path}: 'graphs.{name}.file' names {graph['file']!r}, which is not in {export_dir}")
    try:
        data = read_bytes(path, LIMITS["weights_bytes"])
    except UntrustedFileError as exc:
        raise error(str(exc)) from None
    digest = hashlib.sha256(data).digest()
    if digest not in _SOUND:
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:        # protobuf's own errors, whatever their type
            raise error(f"{path}: not a valid ONNX model "
                        f"({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None
        check_self_contained(model, path, error)
        check_bounded(model, path, error)
        del model
        _SOUND.add(digest)
    try:
        session = create_session(path, provider, threads, spinning, precision, data=data)
    except UnicodeError as exc:     # ONNX Runtime quoting the file's damaged text in its message
        raise error(f"{path}: ONNX Runtime cannot load it (a name or operator in it is not UTF-8 text: "
                    f"{exc.reason})") from None
    except (RuntimeError, ValueError):
        raise                       # the machine or the caller's settings (no GPU for "cuda"), not the file
    except Exception as exc:        # ONNX Runtime's own errors: it refuses the model (bad graph, operator, ...)
        raise error(f"{path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from None
    got = {i.name: i for i in (*session.get_inputs(), *session.get_outputs())}
    got_in, got_out = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if sorted(got_in) != sorted(graph["inputs"]) or got_out != list(graph["outputs"]):
        raise error(f"{path}: graph takes {got_in} -> {got_out}, but {spec_path.name} says "
                    f"{graph['inputs']} -> {graph['outputs']}")
    for key, arg in got.items():
        want_type = (types or {}).get(key, FLOAT)
        if arg.type != want_type:
            raise error(f"{path}: '{key}' is {arg.type}, but {spec_path.name} implies {want_type}")
    for key, want in shapes.items():
        if key not in got:
            continue
        shape = got[key].shape
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(fixed) != len(want) or any(g is not None and w is not None and g != w for g, w in zip(fixed, want)):
            implied = ", ".join("batch" if w is None else str(w) for w in want)
            raise error(f"{path}: '{key}' has shape {shape}, but {spec_path.name} implies ({implied})")
    return session
