"""Inference configurations behind one interface: ``Runtime.predict(obs, noise, prefix) -> actions``.

Every runtime takes numpy observations (each key (B, To, ...), task units, uint8 images),
optionally the start sample ``noise`` (B, Tp, Da), an action ``prefix`` (B, P, Da) already
committed at chunk indices ``start .. start + P - 1`` and the current plan ``previous`` (B, P, Da)
from ``start`` on (for search's coherence verifier), and returns the whole chunk
(B, Tp, Da) float32 in task units; the actions due now start at index ``start = To - 1``.
All of them run the same host sampling code (:meth:`Policy.predict_chunk`) on a private copy
of the process, so they differ only in how the encoder and denoiser are evaluated; the loop kinds
run the process's whole ``sample`` as one graph instead.

Kinds (``build_runtime``): torch-eager, torch-precond (a UNet's conditioning precomputed per
schedule and chunk, see :mod:`cadence.policies.networks.unet1d`), torch-compile, torch-cudagraph,
torch-cudagraph-loop (the whole sampling loop captured as one CUDA graph),
torch-fp16, torch-bf16, onnx-cpu, onnx-cpu-precond (the export's precomputed-conditioning graphs),
onnx-cpu-int8 (the export's 8-bit denoiser for the last sampling steps it was fitted for, see
:mod:`cadence.deploy.reduced_precision`), onnx-cpu-loop (the export's whole sampling loop as one graph,
at a step count it has one for, see :mod:`cadence.deploy.loop_graph`), onnx-cuda, onnx-cuda-fp16 (the
export's float16 denoiser for its fitted last steps), onnx-cuda-loop, onnx-tensorrt,
onnx-tensorrt-fp16 and onnx-tensorrt-int8 (the fp32 graphs, and the float16 / QDQ int8 one for its
last steps, through ONNX Runtime's TensorRT provider).
On a CPU: torch-eager, torch-precond, onnx-cpu, onnx-cpu-precond, onnx-cpu-int8 and onnx-cpu-loop
always (the export must have the graphs),
torch-compile where a C++ compiler is present (inductor), torch-bf16 where the CPU has native
bf16 (AVX512-BF16 or AMX); the other kinds need a CUDA GPU (and the TensorRT ones TensorRT's libraries).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import shutil
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from cadence.policies.policy import Policy
from cadence.policies.processes import KnownActions
from torch import nn

from .export_spec import build_process, read_spec
from .exported_policy import ExportedPolicy, load_exported
from .loop_graph import LoopSampled
from .onnx_providers import CUDA, TENSORRT, cuda_unavailable_reason, tensorrt_unavailable_reason

KINDS = ("torch-eager", "torch-precond", "torch-compile", "torch-cudagraph", "torch-fp16", "torch-bf16", "onnx-cpu",
         "onnx-cpu-precond", "onnx-cpu-int8", "onnx-cpu-loop", "onnx-cuda", "onnx-cuda-fp16", "onnx-cuda-loop",
         "onnx-tensorrt", "onnx-tensorrt-fp16", "onnx-tensorrt-int8", "torch-cudagraph-loop")
LOOP_KINDS = ("onnx-cpu-loop", "onnx-cuda-loop")     # the export's whole-loop graph, at the steps it has one for
REDUCED_KINDS = {"onnx-cpu-int8": "int8", "onnx-cuda-fp16": "fp16", "onnx-tensorrt-fp16": "fp16",   # kind -> precision
                 "onnx-tensorrt-int8": "int8_qdq"}
MODES = ("eager", "compile", "cudagraph", "cudagraph-loop")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@runtime_checkable
class Runtime(Protocol):
    name: str
    sample_steps: int

    def predict(self, obs: Mapping[str, np.ndarray], noise: np.ndarray | None = None,
                prefix: np.ndarray | None = None, previous: np.ndarray | None = None) -> np.ndarray: ...

    def reset(self) -> None: ...


# --- shared pieces ------------------------------------------------------------------------------

def _to_tensor(array, device: torch.device) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)


def _run_policy(policy: Policy, obs: Mapping[str, np.ndarray], noise, prefix, generator: torch.Generator,
                device: torch.device, previous=None) -> np.ndarray:
    obs_t = {k: _to_tensor(v, device) for k, v in obs.items()}
    prefix_t = None if prefix is None else _to_tensor(np.asarray(prefix, dtype=np.float32), device)
    extra = {} if previous is None else {"previous": _to_tensor(np.asarray(previous, dtype=np.float32), device)}
    noise_t = None if noise is None else _to_tensor(np.asarray(noise, dtype=np.float32), device)
    if noise_t is not None:
        b = next(iter(obs_t.values())).shape[0]
        want = (b, policy.pred_horizon, policy.action_dim)
        if tuple(noise_t.shape) != want:
            raise ValueError(f"noise must have shape {want} (B, Tp, Da), got {tuple(noise_t.shape)}")
    with torch.no_grad():
        chunk = policy.predict_chunk(obs_t, generator=generator, noise=noise_t, prefix=prefix_t, **extra)
    return chunk.actions.float().cpu().numpy()


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


# --- PyTorch --------------------------------------------------------------------------------------

class _Encoder(nn.Module):
    """The policy's encoder under autocast; its output ``cond`` is float32 (autocast casts it again inside)."""

    def __init__(self, encoder: nn.Module, autocast):
        super().__init__()
        self.inner, self.autocast = encoder, autocast

    def forward(self, obs, normalizer):
        with self.autocast():
            return self.inner(obs, normalizer).float()


class _Denoiser(nn.Module):
    """The denoiser under autocast (low precision) whose output is always float32, so the
    host sampling arithmetic stays in float32."""

    def __init__(self, net: nn.Module, autocast):
        super().__init__()
        self.inner, self.autocast = net, autocast

    def prepare_sampling(self, levels) -> bool:
        return _prepare_inner(self.inner, levels)

    def forward(self, x, level, cond, step=None):
        with self.autocast():
            return _each(self.inner(x, level, cond, step=step), lambda o: o.float())


def _each(out, fn):
    """``fn`` applied to a denoiser's output: one tensor, or a tuple (anchor: chunks and logits)."""
    return tuple(fn(o) for o in out) if isinstance(out, tuple) else fn(out)


def _prepare_inner(inner: nn.Module, levels) -> bool:
    """Pass a schedule to a wrapped denoiser with step-indexed caches; whether it rebuilt them."""
    prepare = getattr(inner, "prepare_sampling", None)
    return bool(prepare(levels)) if prepare is not None else False


class _Compiled(nn.Module):
    """``torch.compile`` of the denoiser: on CUDA ``mode="reduce-overhead"`` (CUDA graphs via
    cudagraph trees; a replay's outputs are overwritten by the next, so they are cloned), on the
    CPU inductor's default C++ kernels."""

    def __init__(self, net: nn.Module, cuda: bool):
        super().__init__()
        self.inner, self.cuda = net, cuda
        self._fn = torch.compile(net.forward, mode="reduce-overhead" if cuda else None)

    def prepare_sampling(self, levels) -> bool:
        return _prepare_inner(self.inner, levels)

    def forward(self, x, level, cond, step=None):
        if not self.cuda:
            return self._fn(x, level, cond, step=step)
        torch.compiler.cudagraph_mark_step_begin()
        return _each(self._fn(x, level, cond, step=step), torch.clone)


class _CudaGraph(nn.Module):
    """One denoiser call captured into a CUDA graph with static inputs, one graph per input signature
    (batch size). Inputs are copied into the static buffers, the graph is replayed, the output cloned."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.inner = net
        self._graphs: dict[tuple, tuple[tuple[torch.Tensor, ...], object, torch.cuda.CUDAGraph]] = {}
        self._per_step = False

    def prepare_sampling(self, levels) -> bool:
        rebuilt = _prepare_inner(self.inner, levels)
        if rebuilt:                 # captured graphs read the old cache tensors
            self._graphs.clear()
            self._per_step = True   # a step-indexed cache: one graph per sampling step
        return rebuilt

    def forward(self, x, level, cond, step=None):
        args = (x, level.expand(x.shape[0]) if level.ndim == 0 else level, cond)
        key = (step if self._per_step else None, *((tuple(a.shape), a.dtype, a.device) for a in args))
        if key not in self._graphs:
            self._graphs[key] = self._capture(args, step)
        static_in, static_out, graph = self._graphs[key]
        for buf, value in zip(static_in, args):
            buf.copy_(value)
        graph.replay()
        return _each(static_out, torch.clone)

    def _capture(self, args, step):
        return _capture_cuda_graph(lambda *a: self.inner(*a, step=step), args)


@torch.no_grad()
def _capture_cuda_graph(fn, args, warmup: int = 3):
    """``fn(*args)`` captured into a CUDA graph: (static inputs to copy into, static output, graph)."""
    static_in = tuple(a.detach().clone() for a in args)
    device = static_in[0].device
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):                # warm up (cuDNN algorithm choice, allocator) off the capture
        for _ in range(warmup):
            fn(*static_in)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(*static_in)
    return static_in, static_out, graph


class _CudaGraphLoop(nn.Module):
    """The process's whole ``sample`` around the denoiser captured into one CUDA graph per input
    signature (batch size): ``forward(cond, noise, known, known_mask) -> x``, the signature of an
    exported loop graph, so :class:`~cadence.deploy.loop_graph.LoopSampled` drives it. One replay per
    chunk: no host work between steps."""

    def __init__(self, net: nn.Module, process):
        super().__init__()
        self.inner, self.process = net, process
        self._graphs: dict[tuple, tuple] = {}

    def prepare_sampling(self, levels) -> bool:
        rebuilt = _prepare_inner(self.inner, levels)
        if rebuilt:                 # captured graphs read the old cache tensors
            self._graphs.clear()
        return rebuilt

    def _sample(self, cond, noise, known, known_mask):
        return self.process.sample(self.inner, cond, tuple(noise.shape), noise=noise,
                                   known=KnownActions(known, known_mask))

    def forward(self, cond, noise, known, known_mask):
        args = (cond, noise, known.to(noise), known_mask.to(noise.device))
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        if key not in self._graphs:
            self._graphs[key] = _capture_cuda_graph(self._sample, args)
        static_in, static_out, graph = self._graphs[key]
        for buf, value in zip(static_in, args):
            buf.copy_(value)
        graph.replay()
        return static_out.clone()


def cpu_bf16_reason() -> str | None:
    """Why bf16 cannot run fast on this CPU (None: it can: AVX512-BF16 or AMX through oneDNN)."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if supported is None or not supported():
        return "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would be emulated, slower than fp32"
    return None


def cpu_compile_reason() -> str | None:
    """Why torch.compile cannot run on this CPU (None: it can: inductor needs a C++ compiler)."""
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++), none on PATH"
    return None


def _needs_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        raise ValueError(f"{what} needs a CUDA device (got device={str(device)!r}); on this machine use "
                         "dtype='float32', mode='eager' (or an ONNX runtime)")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what}: device {str(device)!r} requested but torch sees no CUDA GPU")


class TorchRuntime:
    """The PyTorch policy on ``device``. float16 and ``mode="cudagraph"`` (one graph per denoiser call)
    or ``"cudagraph-loop"`` (the whole sampling loop as one graph, for processes with ``loop_graph``,
    without a block cache) need CUDA; bfloat16 runs on CUDA or on a CPU with native bf16;
    ``mode="compile"`` on CUDA or on a CPU with a C++ compiler.
    ``precompute_conditioning``: a UNet denoiser's FiLM terms computed once per schedule and chunk.

    Works on a private deep copy of the policy: the caller's modules, device and process are
    never touched. A block cache (BAC schedules installed by ``load_policy``) comes along unless
    ``block_cache=False``; it then needs a schedule for the runtime's number of sampling steps.
    Low precision casts the encoder's and denoiser's parameters (not buffers such as the
    level-embedding frequencies or the normalizer) and runs them under autocast; the
    denoiser's output is cast back to float32 so sampling arithmetic stays float32.
    """

    def __init__(self, policy: Policy, device: str | torch.device = "cpu", sample_steps: int | None = None,
                 dtype: str | torch.dtype = "float32", mode: str = "eager", seed: int | None = None,
                 block_cache: bool = True, precompute_conditioning: bool = False):
        if isinstance(policy, ExportedPolicy):
            raise TypeError("TorchRuntime runs a PyTorch policy; use OnnxRuntime for an ONNX export")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        if isinstance(dtype, torch.dtype):
            self.dtype = dtype
        elif dtype in DTYPES:
            self.dtype = DTYPES[dtype]
        else:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if self.dtype not in _SHORT:
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        cpu = self.device.type == "cpu"
        if self.dtype == torch.bfloat16 and cpu:
            if cpu_bf16_reason():
                raise RuntimeError(f"dtype bf16: {cpu_bf16_reason()}")
        elif self.dtype != torch.float32:
            _needs_cuda(self.device, f"dtype {_SHORT[self.dtype]}")
        if mode == "compile" and cpu:
            if cpu_compile_reason():
                raise RuntimeError(cpu_compile_reason())
        elif mode != "eager":
            _needs_cuda(self.device, f"mode {mode!r}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {str(self.device)!r} requested but torch sees no CUDA GPU")
        if self.dtype == torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f"{torch.cuda.get_device_name(self.device)} does not support bfloat16")
        self.mode = mode

        private = copy.deepcopy(policy)
        private.process = policy.process.with_steps(sample_steps)
        private.reset()                                 # a runtime starts with no episode under way
        if not block_cache and getattr(private.denoiser, "branch_cache", None) is not None:
            private.denoiser.branch_cache = None        # the policy's block cache (BAC) left out
        private.to(self.device).eval()
        if precompute_conditioning:
            if not hasattr(private.denoiser, "precompute_conditioning"):
                raise ValueError(f"precomputed conditioning needs a UNet denoiser, not {type(private.denoiser).__name__}")
            if self.dtype != torch.float32:
                raise ValueError("precomputed conditioning runs in float32 (its terms are computed outside autocast)")
            private.denoiser.precompute_conditioning = True
        autocast = self._autocast_factory()
        if self.dtype != torch.float32:
            for module in (private.encoder, private.denoiser):
                for param in module.parameters():
                    param.data = param.data.to(self.dtype)
        denoiser = private.denoiser
        if self.dtype != torch.float32:     # float32 eager runs the policy's own modules, unwrapped
            private.encoder = _Encoder(private.encoder, autocast)
            denoiser = _Denoiser(denoiser, autocast)
        if mode == "compile":
            denoiser = _Compiled(denoiser, cuda=not cpu)
        elif mode == "cudagraph":
            denoiser = _CudaGraph(denoiser)
        elif mode == "cudagraph-loop":
            if getattr(private.denoiser, "branch_cache", None) is not None:
                raise ValueError("mode 'cudagraph-loop' captures the uncached loop; build it with block_cache=False")
            denoiser = _CudaGraphLoop(denoiser, private.process)
            private.process = LoopSampled(private.process, private.process.sample_steps)
        private.denoiser = denoiser
        self.policy = private
        self.sample_steps = int(private.process.sample_steps)
        self.start = private.obs_horizon - 1
        self.name = f"torch-{mode}{'-precond' if precompute_conditioning else ''}-{self.device.type}-{_SHORT[self.dtype]}"
        self._generator = _generator(self.device, seed)

    def _autocast_factory(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext
        device_type, dtype = self.device.type, self.dtype
        # cache_enabled=False: required inside CUDA-graph capture; the weights are cast already anyway.
        return lambda: torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=False)

    def predict(self, obs: Mapping[str, np.ndarray], noise: np.ndarray | None = None,
                prefix: np.ndarray | None = None, previous: np.ndarray | None = None) -> np.ndarray:
        return _run_policy(self.policy, obs, noise, prefix, self._generator, self.device, previous)

    def reset(self) -> None:
        """Clear per-episode state (a streaming policy's buffer)."""
        self.policy.reset()


# --- ONNX Runtime ---------------------------------------------------------------------------------

class OnnxRuntime:
    """An ONNX export run by ONNX Runtime; the sampling loop runs on the host (CPU tensors)."""

    def __init__(self, export_dir: str | os.PathLike, provider: str = "auto", sample_steps: int | None = None,
                 threads: int | None = None, seed: int | None = None, precond: bool = False,
                 precision: str | None = None, loop: bool = False):
        loop_steps = (sample_steps or build_process(read_spec(export_dir)["process"]).sample_steps) if loop else None
        self.policy: ExportedPolicy = load_exported(export_dir, provider=provider, threads=threads, precond=precond,
                                                    precision=precision, loop_steps=loop_steps)
        self.policy.process = self.policy.process.with_steps(sample_steps)
        self.provider = self.policy.provider
        self.sample_steps = int(self.policy.process.sample_steps)
        self.start = self.policy.obs_horizon - 1
        self.name = ({CUDA: "onnx-cuda", TENSORRT: "onnx-tensorrt"}.get(self.provider, "onnx-cpu")
                     + ("-precond" if precond else "") + (f"-{precision}" if precision else "") + ("-loop" if loop else ""))
        if precision is not None:
            fitted = self.policy.spec[precision]["last_steps"]
            if str(self.sample_steps) not in fitted:
                raise ValueError(f"{export_dir}: the {precision} denoiser has fitted steps for "
                                 f"{sorted(map(int, fitted))} sampling steps, not {self.sample_steps} (cadence export "
                                 f"{precision}=true {precision}_steps=[{self.sample_steps}])")
            self.policy.denoiser.first_reduced = self.sample_steps - fitted[str(self.sample_steps)]
        self._generator = _generator(torch.device("cpu"), seed)

    def predict(self, obs: Mapping[str, np.ndarray], noise: np.ndarray | None = None,
                prefix: np.ndarray | None = None, previous: np.ndarray | None = None) -> np.ndarray:
        return _run_policy(self.policy, obs, noise, prefix, self._generator, torch.device("cpu"), previous)

    def reset(self) -> None:
        """Clear per-episode state (a streaming policy's buffer)."""
        self.policy.reset()


# --- kinds ------------------------------------------------------------------------------------------

def available_runtime_kinds() -> list[str]:
    """The kinds in :data:`KINDS` this machine can run."""
    kinds = ["torch-eager", "torch-precond"]
    if torch.cuda.is_available():
        if importlib.util.find_spec("triton") is not None:
            kinds.append("torch-compile")
        kinds += ["torch-cudagraph", "torch-cudagraph-loop", "torch-fp16"]
        if torch.cuda.is_bf16_supported():
            kinds.append("torch-bf16")
    else:
        kinds += [k for k, reason in (("torch-compile", cpu_compile_reason()), ("torch-bf16", cpu_bf16_reason()))
                  if reason is None]
    kinds += ["onnx-cpu", "onnx-cpu-precond", "onnx-cpu-int8", "onnx-cpu-loop"]
    if cuda_unavailable_reason() is None:
        kinds += ["onnx-cuda", "onnx-cuda-fp16", "onnx-cuda-loop"]
    if tensorrt_unavailable_reason() is None:
        kinds += ["onnx-tensorrt", "onnx-tensorrt-fp16", "onnx-tensorrt-int8"]
    return kinds


def build_runtime(kind: str, policy: Policy | None = None, export_dir: str | os.PathLike | None = None,
                  sample_steps: int | None = None, device: str | torch.device | None = None,
                  threads: int | None = None, seed: int | None = None, block_cache: bool = True) -> Runtime:
    """A runtime from its kind. torch-* need ``policy``, onnx-* need ``export_dir``. ``device``
    (torch kinds): default cuda when available, and cuda for the GPU-only kinds. ``block_cache``
    (torch kinds): keep the policy's block cache, if it has one; ONNX exports always run the uncached
    denoiser (see ``cadence export``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown runtime kind {kind!r}; kinds: {list(KINDS)}")
    if kind.startswith("onnx-"):
        if export_dir is None:
            raise ValueError(f"runtime {kind!r} needs export_dir (an ONNX export; `cadence export` writes one)")
        return OnnxRuntime(export_dir, provider=kind.split("-")[1], sample_steps=sample_steps, threads=threads,
                           seed=seed, precond=kind.endswith("-precond"), precision=REDUCED_KINDS.get(kind),
                           loop=kind in LOOP_KINDS)
    if policy is None:
        raise ValueError(f"runtime {kind!r} needs a PyTorch policy")
    if device is None:
        cpu_kinds = ("torch-eager", "torch-precond", "torch-compile", "torch-bf16")
        device = "cuda" if torch.cuda.is_available() or kind not in cpu_kinds else "cpu"
    options = {"torch-eager": {}, "torch-precond": {"precompute_conditioning": True},
               "torch-compile": {"mode": "compile"}, "torch-cudagraph": {"mode": "cudagraph"},
               "torch-cudagraph-loop": {"mode": "cudagraph-loop"},
               "torch-fp16": {"dtype": "float16"}, "torch-bf16": {"dtype": "bfloat16"}}[kind]
    return TorchRuntime(policy, device=device, sample_steps=sample_steps, seed=seed, block_cache=block_cache, **options)
