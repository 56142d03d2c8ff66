"""Run an ONNX export (``encoder.onnx`` + ``denoiser.onnx`` + ``policy.json``) as a :class:`Policy`.

The graphs replace the observation encoder and the denoiser; the process is rebuilt from
``policy.json`` and the sampling loop is the same Python code the PyTorch policy runs, so
``predict_chunk(obs, generator, noise, prefix)`` means the same thing for both. Host-side
tensors live on the CPU; ONNX Runtime moves each call's inputs to its provider.

``policy.json``'s format and its validation are in cadence.deploy.export_spec.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cadence.datasets.normalizer import Normalizer
from cadence.policies.policy import NonFiniteActions, Policy
from torch import nn

from .export_spec import (DENOISER_OUTPUTS, ENCODER_OUTPUTS, PRECOND_GRAPHS, REDUCED_KEYS, SPEC_FILE,
                          ExportFormatError, ExportRunError, build_process, read_spec, reduced_graph)
from .graph_files import open_graph
from .loop_graph import LoopSampled, OnnxLoop, exported_loop_steps, loop_graph_name

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
