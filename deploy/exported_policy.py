"""Run an ONNX export (``encoder.onnx`` + ``denoiser.onnx`` + ``policy.json``) as a :class:`Policy`.

The graphs replace the observation encoder and the denoiser; the process is rebuilt from
``policy.json`` and the sampling loop is the same Python code the PyTorch policy runs, so
``predict_chunk(obs, generator, noise, prefix)`` means the same thing for both. Host-side
tensors live on the CPU; ONNX Runtime moves each call's inputs to its provider.

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

import copy
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cadence.datasets.normalizer import MODES as NORMALIZER_MODES
from cadence.datasets.normalizer import Normalizer, float32_range
from cadence.policies.policy import NonFiniteActions, Policy
from cadence.policies.processes.base import ProcessBase, ProcessSpecError, process_class, process_names
from torch import nn

from cadence.untrusted import LIMITS, UntrustedFileError, check_int, check_shape, read_json

from .graph_files import open_graph
from .loop_graph import (LOOP_INPUTS, LOOP_OUTPUTS, LoopSampled, OnnxLoop, exported_loop_steps, loop_graph_name,
                         loop_steps_of)

from cadence.errors import CadenceError

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
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)):
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


# --- ONNX Runtime sessions as modules ---------------------------------------------------------

def _numpy(t: torch.Tensor | np.ndarray, dtype: np.dtype) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.ascontiguousarray(t, dtype=dtype)


class OnnxEncoder(nn.Module):
    """``forward(obs, normalizer=None) -> cond``; normalisation is inside the graph."""

    def __init__(self, session, obs_spec: Mapping[str, Mapping[str, Any]], obs_horizon: int):
        super().__init__()
        self.session = session
        self.keys = sorted(obs_spec)
        self.shapes = {k: tuple(obs_spec[k]["shape"]) for k in self.keys}
        self.dtypes = {k: np.dtype(obs_spec[k]["dtype"]) for k in self.keys}
        self.obs_horizon = obs_horizon

    def forward(self, obs: Mapping[str, torch.Tensor], normalizer: Normalizer | None = None) -> torch.Tensor:
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing} (the exported encoder takes {self.keys})")
        feeds, batch, device = {}, None, torch.device("cpu")
        for key in self.keys:
            value = obs[key]
            if isinstance(value, torch.Tensor):
                device = value.device
            shape = tuple(value.shape)
            want = (self.obs_horizon, *self.shapes[key])
            if len(shape) != len(want) + 1 or shape[1:] != want or (batch is not None and shape[0] != batch):
                raise ValueError(f"observation {key!r} has shape {shape}; the exported encoder takes (B, *{want}) "
                                 "with the same B for every key")
            batch = shape[0]
            if self.dtypes[key] == np.uint8 and _dtype_name(value) != "uint8":
                raise TypeError(f"observation {key!r} must be uint8 images (the exported graph takes uint8), "
                                f"got {_dtype_name(value)}")
            feeds[key] = _numpy(value, self.dtypes[key])
        (cond,) = self.session.run(ENCODER_OUTPUTS, feeds)
        return torch.from_numpy(cond).to(device)


def _dtype_name(value) -> str:
    return str(value.dtype).removeprefix("torch.")


class OnnxDenoiser(nn.Module):
    """``forward(x (B, Tp, Da), level (B,) or (B, Tp) for streaming, cond (B, Dc)) -> (B, Tp, Da)``:
    one ONNX Runtime call (anchor: ``x`` (B, K, Tp, Da) -> ``(chunks (B, K, Tp, Da), logits (B, K))``).
    The exported graph is the same at every sampling step, so ``step`` is not used."""

    def __init__(self, session, outputs: list[str] = DENOISER_OUTPUTS):
        super().__init__()
        self.session, self.outputs = session, list(outputs)

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None):
        level = level.expand(x.shape[0]) if level.ndim == 0 else level
        feeds = {"x": _numpy(x, np.float32), "level": _numpy(level, np.float32), "cond": _numpy(cond, np.float32)}
        out = tuple(torch.from_numpy(o).to(x.device) for o in self.session.run(self.outputs, feeds))
        return out[0] if len(out) == 1 else out


class OnnxReducedDenoiser(OnnxDenoiser):
    """The fp32 denoiser for the first sampling steps and a reduced-precision one (``denoiser_int8``,
    ``denoiser_fp16``) from step ``first_reduced`` on; a call without a step index (training-style
    use) runs fp32."""

    def __init__(self, session, reduced_session, outputs: list[str] = DENOISER_OUTPUTS):
        super().__init__(session, outputs)
        self.fp32_session, self.reduced_session = session, reduced_session
        self.first_reduced = math.inf

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None):
        late = step is not None and step >= self.first_reduced
        self.session = self.reduced_session if late else self.fp32_session
        return super().forward(x, level, cond, step)


class OnnxPrecondDenoiser(nn.Module):
    """The denoiser with precomputed conditioning: :meth:`prepare_sampling` runs ``film_level`` once
    per schedule, ``film_cond`` runs once per chunk (while the same ``cond`` tensor comes back), and
    each step runs ``denoiser_film`` on their sum. A level other than the schedule's at that step
    gets its terms computed on the spot: the same answer, without the saving."""

    def __init__(self, sessions: Mapping[str, Any], outputs: list[str]):
        super().__init__()
        self.sessions, self.outputs = dict(sessions), list(outputs)
        self._levels: np.ndarray | None = None
        self._level_terms: np.ndarray | None = None
        self._cond: dict | None = None

    def _terms(self, name: str, feed: str, value: np.ndarray) -> np.ndarray:
        return self.sessions[name].run(["terms"], {feed: value})[0]

    def prepare_sampling(self, levels) -> bool:
        levels = np.asarray([float(v) for v in levels], dtype=np.float32)
        if self._levels is not None and np.array_equal(levels, self._levels):
            return False
        self._levels, self._level_terms = levels, self._terms("film_level", "level", levels)
        return True

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor, step: int | None = None):
        level = _numpy(level.expand(x.shape[0]) if level.ndim == 0 else level, np.float32)
        stored = self._levels is not None and step is not None and 0 <= step < len(self._levels)
        if stored and np.all(level == self._levels[step]):
            level_terms = self._level_terms[step: step + 1]
        else:
            level_terms = self._terms("film_level", "level", level)
        cached = self._cond
        if cached is None or cached["cond"] is not cond or cached["version"] != cond._version:
            cached = self._cond = {"cond": cond, "version": cond._version,
                                   "terms": self._terms("film_cond", "cond", _numpy(cond, np.float32))}
        feeds = {"x": _numpy(x, np.float32), "film": level_terms + cached["terms"]}
        out = tuple(torch.from_numpy(o).to(x.device) for o in self.sessions["denoiser_film"].run(self.outputs, feeds))
        return out[0] if len(out) == 1 else out


class ExportedPolicy(Policy):
    """A :class:`Policy` whose encoder and denoiser are ONNX Runtime sessions. Inference only."""

    def __init__(self, spec: Mapping[str, Any], export_dir: Path, encoder: OnnxEncoder, denoiser: OnnxDenoiser,
                 provider: str):
        norm_spec = spec["action_normalizer"]
        normalizer = Normalizer()
        normalizer.add(spec["action_key"], norm_spec["mode"], torch.tensor(norm_spec["scale"], dtype=torch.float32),
                       torch.tensor(norm_spec["offset"], dtype=torch.float32))
        super().__init__(normalizer, encoder, denoiser, build_process(spec["process"]), spec["obs_horizon"],
                         spec["pred_horizon"], spec["action_dim"], action_key=spec["action_key"])
        self.spec = copy.deepcopy(dict(spec))
        self.export_dir = export_dir
        self.provider = provider        # the ONNX Runtime provider the sessions actually run on
        self.eval()

    @property
    def obs_spec(self) -> dict[str, dict[str, Any]]:
        return self.spec["obs"]

    def compute_loss(self, batch, generator=None):
        raise NotImplementedError("an ONNX-exported policy is inference-only; train the PyTorch checkpoint")

    def predict_chunk(self, *args, **kwargs):
        """:meth:`Policy.predict_chunk`, with ONNX Runtime's own run errors (a graph that loads but
        fails on the inputs its ``policy.json`` implies) and actions that are not finite raised as
        :class:`ExportRunError` naming the export."""
        try:
            return super().predict_chunk(*args, **kwargs)
        except NonFiniteActions:
            raise ExportRunError(f"{self.export_dir}: the export's graphs gave actions that are not finite (NaN or "
                                 "infinite); its graphs or weights are damaged") from None
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise ExportRunError(f"{self.export_dir}: ONNX Runtime failed running the export's graphs "
                                 f"({' '.join(str(exc).split())[:200]})") from None


def load_exported(out_dir: str | os.PathLike, provider: str = "auto", threads: int | None = None,
                  precond: bool = False, precision: str | None = None, loop_steps: int | None = None
                  ) -> ExportedPolicy:
    """Open an export folder; ``provider``: "auto" | "cpu" | "cuda"; ``threads``: ONNX Runtime intra-op
    threads; ``precond``: run the precomputed-conditioning graphs instead of ``denoiser``; ``precision``
    ("int8" | "fp16"): also open ``denoiser_<precision>`` (an :class:`OnnxReducedDenoiser`; its
    ``first_reduced`` starts at never);
    ``loop_steps``: sample with the whole-loop graph ``loop_<N>`` instead (at those N steps only)."""
    if sum((precond, precision is not None, loop_steps is not None)) > 1:
        raise ValueError("precond, precision and loop_steps are separate runtimes; choose one")
    if precision is not None and precision not in REDUCED_KEYS:
        raise ValueError(f"precision must be one of {sorted(REDUCED_KEYS)} or None, got {precision!r}")
    export_dir = Path(out_dir)
    spec = read_spec(export_dir)
    To, Tp, Da, cond = spec["obs_horizon"], spec["pred_horizon"], spec["action_dim"], spec["cond_dim"]
    process = build_process(spec["process"])
    chunk = list(process.graph_chunk(Tp, Da))
    level = [Tp] if process.level_per_action else []
    shapes = {"encoder": {**{k: [None, To, *o["shape"]] for k, o in spec["obs"].items()}, "cond": [None, cond]},
              "denoiser": {"x": [None, *chunk], "level": [None, *level], "cond": [None, cond + process.extra_cond_dim],
                           "out": [None, *chunk]}}   # None: the batch (or a count of levels), free
    types = {"encoder": {k: {"float32": "tensor(float)", "uint8": "tensor(uint8)"}[o["dtype"]]
                         for k, o in spec["obs"].items()}}
    names = ["encoder", "denoiser"]
    if precond:
        if "film_dim" not in spec:
            raise ExportFormatError(f"{export_dir / SPEC_FILE}: no precomputed-conditioning graphs (only UNet "
                                    "denoisers have them; an export older than them needs `cadence export` again)")
        film = spec["film_dim"]
        shapes.update({"film_level": {"level": [None], "terms": [None, film]},
                       "film_cond": {"cond": shapes["denoiser"]["cond"], "terms": [None, film]},
                       "denoiser_film": {"x": [None, *chunk], "film": [None, film], "out": [None, *chunk]}})
        names = ["encoder", *PRECOND_GRAPHS]
    if precision is not None:
        if reduced_graph(precision) not in spec["graphs"]:
            raise ExportFormatError(f"{export_dir / SPEC_FILE}: no {precision} denoiser (`cadence export "
                                    f"{precision}=true` writes one)")
        shapes[reduced_graph(precision)] = shapes["denoiser"]
        names.append(reduced_graph(precision))
    if loop_steps is not None:
        loop = loop_graph_name(loop_steps)
        if loop not in spec["graphs"]:
            have = exported_loop_steps(spec)
            raise ExportFormatError(f"{export_dir / SPEC_FILE}: no loop graph for {loop_steps} steps (it has "
                                    f"{have or 'none'}; `cadence export loop_steps=[{loop_steps}]` writes one)")
        shapes[loop] = {"cond": [None, cond], "noise": [None, Tp, Da], "known": [None, Tp, Da], "known_mask": [Tp],
                        "x": [None, Tp, Da]}
        types[loop] = {"known_mask": "tensor(bool)"}
        names = ["encoder", loop]
    sessions = {name: open_graph(export_dir, export_dir / SPEC_FILE, name, spec["graphs"][name], shapes[name],
                                 ExportFormatError, provider, threads, spinning=name.startswith(("denoiser", "loop_")),
                                 precision=precision if precision and name == reduced_graph(precision) else None,
                                 types=types.get(name))
                for name in names}   # only the graph run step after step spins (see create_session)
    used = sessions[names[-1]].get_providers()[0]
    outputs = spec["graphs"]["denoiser"]["outputs"]
    if loop_steps is not None:
        denoiser = OnnxLoop(sessions[names[-1]])
    elif precond:
        denoiser = OnnxPrecondDenoiser({n: sessions[n] for n in PRECOND_GRAPHS}, outputs)
    elif precision is not None:
        denoiser = OnnxReducedDenoiser(sessions["denoiser"], sessions[reduced_graph(precision)], outputs)
    else:
        denoiser = OnnxDenoiser(sessions["denoiser"], outputs)
    policy = ExportedPolicy(spec, export_dir, OnnxEncoder(sessions["encoder"], spec["obs"], spec["obs_horizon"]),
                            denoiser, provider=used)
    if loop_steps is not None:
        policy.process = LoopSampled(policy.process, loop_steps)
    return policy
