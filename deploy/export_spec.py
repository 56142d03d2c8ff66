"""An ONNX export's ``policy.json``: its format, its validation (every key of an untrusted file
checked before anything is built from it), reading and writing it, and the process it rebuilds.

``policy.json`` (format 1)::

    format_version   1
    process          {"type": "ddpm", "schedule": "cosine", "train_steps", "sample_steps", "clip_sample"}
                     | {"type": "flow", "sample_steps", "level_scale"} | {"type": "regression"}
                     | {"type": "edm", "sample_steps", "sigma_min", "sigma_max", "sigma_data", "sampler",
                        "clip_sample"}
                     | {"type": "anchor", "schedule": "cosine", "train_steps", "trunc_steps", "start_step",
                        "sample_steps", "select", "temperature", "anchors": (T, K, Tp, Da) nested lists}
                     | {"type": "streaming", "schedule": "cosine", "train_steps", "sample_steps", "start_steps",
                        "clip_sample", "obs_horizon", "pred_horizon", "exec_horizon"}   (denoiser level (B, Tp))
                     | {"type": "shortcut", "sample_steps", "max_steps", "level_scale"}   (the denoiser's cond is
                        the encoder's ``cond`` and the step-size code, log2(max_steps) + 1 wide)
                     Each type's fields are declared by its process class (``spec_fields``; see
                     cadence.policies.processes.base), which checks them on load.
    obs              {key: {"shape": per-step shape, "dtype": "float32" | "uint8"}}   (task units)
    obs_horizon, pred_horizon, action_dim, action_key, cond_dim
    action_normalizer {"mode", "scale": [Da], "offset": [Da]}   normalised = action * scale + offset
    graphs           {"encoder": {"file", "inputs": sorted obs keys, "outputs": ["cond"]},
                      "denoiser": {"file", "inputs": ["x", "level", "cond"], "outputs": ["out"]}}
                     (anchor: x is (B, K, Tp, Da), outputs ["out", "logits"]: every mode's chunk and
                     confidence; the host noises the anchors, steps and picks the mode)
                     UNet denoisers add "film_level" (["level"] (S,) -> ["terms"] (S, film_dim)),
                     "film_cond" (["cond"] -> ["terms"] (B, film_dim)) and "denoiser_film" (["x", "film"]
                     -> ["out"]): precomputed conditioning, run by load_exported(precond=True)
    film_dim         (with those graphs) the width of all FiLM outputs side by side
                     "denoiser_int8" (optional; ``cadence export int8=true``): the denoiser with 8-bit
                     weights (its convolutions as MatMul), the same inputs and outputs
                     "denoiser_fp16" (optional; ``cadence export fp16=true``): the denoiser in float16
                     (float32 inputs and outputs), for GPUs
                     "denoiser_int8_qdq" (optional; ``cadence export int8_qdq=true``): int8 convolutions in
                     QDQ form, for TensorRT
                     "loop_<N>" (optional, any number; ``cadence export loop_steps=[N]``): the whole sampling
                     loop at N steps as one graph, ["cond", "noise", "known", "known_mask"] -> ["x"]
                     (cadence.deploy.loop_graph)
    int8             (with denoiser_int8) {"bits", "block", "max_error", "windows", "last_steps":
                      {"<sampling steps>": j}}: at that many steps the int8 graph runs the last j of
                      them, fitted on calibration windows (cadence.deploy.reduced_precision)
    fp16             (with denoiser_fp16) {"max_error", "windows", "last_steps"}: the same for float16
    int8_qdq         (with denoiser_int8_qdq) the same keys as fp16
    source           {"checkpoint": path or "", "step": int or null, "weights_sha256" (optional): hash of
                      the model.safetensors exported, which ``cadence run`` checks before reusing it}
    versions         {"cadence", "torch", "onnx", "onnxscript", "opset"}
    export_check     (optional) {"batch", "<graph>_max_abs_err" for each graph}
    control          (optional) {"fps": the rate it was trained at (the store's), "exec_horizon"}: what a
                      control loop runs it at (``cadence run`` takes both from the checkpoint it came from)
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cadence.datasets.normalizer import MODES as NORMALIZER_MODES
from cadence.datasets.normalizer import float32_range
from cadence.errors import CadenceError
from cadence.policies.processes.base import ProcessBase, ProcessSpecError, process_class, process_names
from cadence.untrusted import LIMITS, UntrustedFileError, check_int, check_shape, finite_number, read_json

from .loop_graph import LOOP_INPUTS, LOOP_OUTPUTS, loop_steps_of

FORMAT_VERSION = 1
SPEC_FILE = "policy.json"
ENCODER_FILE, DENOISER_FILE = "encoder.onnx", "denoiser.onnx"
ENCODER_OUTPUTS = ["cond"]
DENOISER_INPUTS, DENOISER_OUTPUTS = ["x", "level", "cond"], ["out"]
# Precomputed conditioning (UNet denoisers): the FiLM terms of the levels and of cond, and the
# network taking their sum; all three or none, with the top-level "film_dim".
# Reduced-precision denoisers run for the last sampling steps: graph "denoiser_<p>" in "denoiser_<p>.onnx",
# with the top-level entry "<p>" holding these keys.
REDUCED_KEYS = {"int8": {"bits", "block", "max_error", "windows", "last_steps"},
                "fp16": {"max_error", "windows", "last_steps"},
                "int8_qdq": {"max_error", "windows", "last_steps"}}
PRECOND_GRAPHS = {"film_level": ("film_level.onnx", ["level"], ["terms"]),
                  "film_cond": ("film_cond.onnx", ["cond"], ["terms"]),
                  "denoiser_film": ("denoiser_film.onnx", ["x", "film"], None)}   # outputs: the denoiser's
OBS_DTYPES = ("float32", "uint8")

_TOP_KEYS = {"format_version", "process", "obs", "obs_horizon", "pred_horizon", "action_dim", "action_key",
             "cond_dim", "action_normalizer", "graphs", "source", "versions"}
_OPTIONAL_TOP_KEYS = {"export_check", "block_cache", "control", "film_dim", *REDUCED_KEYS}   # control: {fps, exec_horizon} the policy runs at


class ExportFormatError(CadenceError, ValueError):
    """A policy.json (or the graphs beside it) that this version cannot run."""


class ExportRunError(CadenceError, RuntimeError):
    """An export's graphs failed while running, or gave actions that are not finite."""


# --- process <-> policy.json ----------------------------------------------------------------

def process_spec(process) -> dict[str, Any]:
    """The parameters that rebuild ``process`` (its registry entry writes them)."""
    if not isinstance(process, ProcessBase):
        raise TypeError(f"cannot export a policy whose process is {type(process).__name__} "
                        f"(exportable: the registered processes {process_names()})")
    return process.spec()


def build_process(spec: Mapping[str, Any], where: str = SPEC_FILE):
    """The process a policy.json ``process`` entry describes; errors name the file and the key."""
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if not isinstance(kind, str) or kind not in process_names():
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ExportFormatError(f"{where}: missing key 'process.type'")
        raise ExportFormatError(f"{where}: 'process.type' must be one of {process_names()}, got {kind!r}")
    try:
        return process_class(kind).from_spec(spec, where)
    except ProcessSpecError as exc:
        raise ExportFormatError(str(exc)) from None


def denoiser_outputs(process_type: str) -> list[str]:
    """The denoiser graph's outputs for a process type."""
    return list(process_class(process_type).graph_outputs)


# --- policy.json validation -------------------------------------------------------------------

def _keys(where: str, obj: Any, name: str, required: set[str], optional: set[str] = frozenset()) -> None:
    label = f"'{name}'" if name else "the top level"
    if not isinstance(obj, dict):
        raise ExportFormatError(f"{where}: {label} must be an object, got {type(obj).__name__}")
    prefix = f"{name}." if name else ""
    missing, unknown = sorted(required - set(obj)), sorted(set(obj) - required - set(optional))
    if missing:
        raise ExportFormatError(f"{where}: missing key '{prefix}{missing[0]}'"
                                + (f" (and {[prefix + m for m in missing[1:]]})" if len(missing) > 1 else ""))
    if unknown:
        raise ExportFormatError(f"{where}: unknown key '{prefix}{unknown[0]}' (expected {sorted(required | optional)})")


def _typed(where: str, value: Any, name: str, kind: type | tuple[type, ...], minimum: float | None = None) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float, (int, float)))
    if not ok:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise ExportFormatError(f"{where}: '{name}' must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ExportFormatError(f"{where}: '{name}' must be >= {minimum}, got {value!r}")
    return value


def _bounded(where: str, value: Any, name: str, low: int, bound: str) -> int:
    try:
        return check_int(where, name, value, low, LIMITS[bound])
    except UntrustedFileError as exc:
        raise ExportFormatError(str(exc)) from None


def _finite(where: str, value: Any, name: str) -> float:
    _typed(where, value, name, (int, float))
    if not math.isfinite(value):
        raise ExportFormatError(f"{where}: '{name}' must be finite, got {value!r}")
    return value


def validate_spec(spec: Any, where: str | os.PathLike = SPEC_FILE) -> dict[str, Any]:
    """Check a parsed policy.json; errors name the file and the key."""
    where = str(where)
    _keys(where, spec, "", _TOP_KEYS, _OPTIONAL_TOP_KEYS)
    version = spec["format_version"]
    if version != FORMAT_VERSION:
        raise ExportFormatError(f"{where}: 'format_version' is {version!r}; this cadence reads {FORMAT_VERSION} "
                                "(re-export the checkpoint with this version)")
    for key, bound in (("obs_horizon", "horizon"), ("pred_horizon", "horizon"), ("action_dim", "action_dim"),
                       ("cond_dim", "width")):
        _bounded(where, spec[key], key, 1, bound)
    if not _typed(where, spec["action_key"], "action_key", str):
        raise ExportFormatError(f"{where}: 'action_key' must be a non-empty string")
    if "control" in spec:
        _keys(where, spec["control"], "control", {"fps", "exec_horizon"})
        _finite(where, spec["control"]["fps"], "control.fps")
        if not spec["control"]["fps"] > 0:
            raise ExportFormatError(f"{where}: 'control.fps' must be > 0, got {spec['control']['fps']!r}")
        _bounded(where, spec["control"]["exec_horizon"], "control.exec_horizon", 1, "horizon")

    process = spec["process"]
    built = build_process(process, where)
    try:
        built.check_policy(spec["obs_horizon"], spec["pred_horizon"], spec["action_dim"])
    except ValueError as exc:
        raise ExportFormatError(f"{where}: 'process': {exc}") from None

    obs = spec["obs"]
    if not isinstance(obs, dict) or not 1 <= len(obs) <= LIMITS["obs_keys"]:
        raise ExportFormatError(f"{where}: 'obs' must be an object of 1 to {LIMITS['obs_keys']} observation keys")
    for key, entry in obs.items():
        _keys(where, entry, f"obs.{key}", {"shape", "dtype"})
        try:
            check_shape(where, f"obs.{key}.shape", entry["shape"])
        except UntrustedFileError as exc:
            raise ExportFormatError(str(exc)) from None
        if entry["dtype"] not in OBS_DTYPES:
            raise ExportFormatError(f"{where}: 'obs.{key}.dtype' must be one of {OBS_DTYPES}, got {entry['dtype']!r}")

    norm = spec["action_normalizer"]
    _keys(where, norm, "action_normalizer", {"mode", "scale", "offset"})
    if norm["mode"] not in NORMALIZER_MODES:
        raise ExportFormatError(f"{where}: 'action_normalizer.mode' must be one of {NORMALIZER_MODES}, "
                                f"got {norm['mode']!r}")
    for name in ("scale", "offset"):
        values = norm[name]
        if (not isinstance(values, list) or len(values) != spec["action_dim"]
                or not all(finite_number(v) is not None for v in values)):
            raise ExportFormatError(f"{where}: 'action_normalizer.{name}' must be {spec['action_dim']} finite numbers "
                                    f"(action_dim), got {values!r}")
    if not float32_range(norm["scale"], norm["offset"]):
        raise ExportFormatError(f"{where}: 'action_normalizer.scale' / 'offset' map actions out of float32's range "
                                f"(a scale of zero or nearly, or an offset too large): {norm['scale']!r}, {norm['offset']!r}"[:400])

    graphs = spec["graphs"]
    loops = {name: loop_steps_of(name) for name in (graphs if isinstance(graphs, dict) else ()) if
             loop_steps_of(name) is not None}
    reduced = {reduced_graph(p): p for p in REDUCED_KEYS}
    _keys(where, graphs, "graphs", {"encoder", "denoiser"}, {*PRECOND_GRAPHS, *reduced, *loops})
    expected = {"encoder": (sorted(obs), ENCODER_OUTPUTS),
                "denoiser": (DENOISER_INPUTS, list(built.graph_outputs))}
    precond = set(PRECOND_GRAPHS) & set(graphs)
    if precond:
        if precond != set(PRECOND_GRAPHS) or "film_dim" not in spec:
            raise ExportFormatError(f"{where}: precomputed conditioning needs all of graphs {sorted(PRECOND_GRAPHS)} "
                                    "and 'film_dim'")
        _bounded(where, spec["film_dim"], "film_dim", 1, "width")
        expected.update({name: (inputs, outputs or list(built.graph_outputs))
                         for name, (_, inputs, outputs) in PRECOND_GRAPHS.items()})
    elif "film_dim" in spec:
        raise ExportFormatError(f"{where}: 'film_dim' without the graphs {sorted(PRECOND_GRAPHS)}")
    for graph, precision in reduced.items():
        if (graph in graphs) != (precision in spec):
            raise ExportFormatError(f"{where}: 'graphs.{graph}' and '{precision}' come together")
        if precision in spec:
            _validate_reduced(where, precision, spec[precision], built)
            expected[graph] = expected["denoiser"]
    for name, steps in loops.items():
        if not built.loop_graph or not built.allows_steps(steps):
            raise ExportFormatError(f"{where}: 'graphs.{name}': the {built.name} process has no loop graph at "
                                    f"{steps} steps")
        expected[name] = (LOOP_INPUTS, LOOP_OUTPUTS)
    for name, (inputs, outputs) in expected.items():
        _keys(where, graphs[name], f"graphs.{name}", {"file", "inputs", "outputs"})
        _typed(where, graphs[name]["file"], f"graphs.{name}.file", str)
        if graphs[name]["inputs"] != inputs:
            raise ExportFormatError(f"{where}: 'graphs.{name}.inputs' must be {inputs}, got {graphs[name]['inputs']!r}")
        if graphs[name]["outputs"] != outputs:
            raise ExportFormatError(f"{where}: 'graphs.{name}.outputs' must be {outputs}, "
                                    f"got {graphs[name]['outputs']!r}")
    _keys(where, spec["source"], "source", {"checkpoint", "step"}, {"weights_sha256"})
    if not isinstance(spec["versions"], dict):
        raise ExportFormatError(f"{where}: 'versions' must be an object")
    return spec


def write_spec(export_dir: Path, spec: Mapping[str, Any]) -> None:
    """Validate ``spec`` and write it as the folder's policy.json in one step (a reader never sees half)."""
    validate_spec(spec, export_dir / SPEC_FILE)
    tmp = export_dir / (SPEC_FILE + ".tmp")
    tmp.write_text(json.dumps(spec, indent=2) + "\n")
    tmp.replace(export_dir / SPEC_FILE)


def reduced_graph(precision: str) -> str:
    """The graph name (and, with ``.onnx``, the file) of an export's ``precision`` denoiser."""
    return f"denoiser_{precision}"


def _validate_reduced(where: str, precision: str, entry: Any, process) -> None:
    _keys(where, entry, precision, REDUCED_KEYS[precision])
    for key in sorted({"bits", "block", "windows"} & REDUCED_KEYS[precision]):
        _bounded(where, entry[key], f"{precision}.{key}", 1, "width")
    if not 0 < _finite(where, entry["max_error"], f"{precision}.max_error") < 1:
        raise ExportFormatError(f"{where}: '{precision}.max_error' must be a fraction in (0, 1), "
                                f"got {entry['max_error']!r}")
    last = entry["last_steps"]
    if not isinstance(last, dict) or len(last) > LIMITS["horizon"]:
        raise ExportFormatError(f"{where}: '{precision}.last_steps' must be an object of at most "
                                f"{LIMITS['horizon']} entries")
    for steps, count in last.items():
        if not (isinstance(steps, str) and steps.isascii() and steps.isdigit() and len(steps) <= 6 and process.allows_steps(int(steps))):
            raise ExportFormatError(f"{where}: '{precision}.last_steps' has key {steps!r}, not a step count this "
                                    "process samples with")
        if not (isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= int(steps)):
            raise ExportFormatError(f"{where}: '{precision}.last_steps.{steps}' must be an integer in 0..{steps}, "
                                    f"got {count!r}")


def read_spec(export_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(export_dir) / SPEC_FILE
    if not path.is_file():
        raise ExportFormatError(f"{path}: not found ({export_dir} is not an ONNX export; run `cadence export`)")
    try:
        spec = read_json(path)
    except UntrustedFileError as exc:
        raise ExportFormatError(str(exc)) from None
    return validate_spec(spec, path)
