"""ONNX Runtime execution providers: pick one that can really run, open quiet sessions.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` even on machines without a GPU, and a
session asked for it there fills stderr with library-loading errors before falling back to
the CPU. So "auto" takes CUDA only when ONNX Runtime lists it *and* torch sees a GPU.
"tensorrt" (never chosen by "auto") also needs TensorRT's own library (``libnvinfer``, from the
``tensorrt`` package or the system); its engines are built on first use and cached in
``$XDG_CACHE_HOME/cadence/tensorrt/<sha256 of the graph file>`` (``~/.cache`` by default): the user's
own folder, never the export's (an engine is native code for the GPU: one from elsewhere is not
loaded), and one folder per graph *content*, because ONNX Runtime names an engine after the graph's
path and structure, not its weights (a retrained export at the same path would find the old engine).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.util
import os
from pathlib import Path

import onnxruntime as ort
import torch

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
NVINFER = "libnvinfer.so.10"       # the TensorRT major version onnxruntime-gpu 1.2x/1.3x is built against
QUIET = 3            # ONNX Runtime log severity: 0 verbose .. 3 error, 4 fatal

_dlls_preloaded = False


def cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime can run on CUDA here, else why not."""
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no {CUDA} (install onnxruntime-gpu)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def _nvinfer_loadable() -> bool:
    """Whether TensorRT's runtime library loads: from the ``tensorrt_libs`` wheel or the system's path."""
    spec = importlib.util.find_spec("tensorrt_libs")
    candidates = glob.glob(os.path.join(os.path.dirname(spec.origin), "libnvinfer.so*")) if spec and spec.origin else []
    for name in [*candidates, NVINFER]:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def tensorrt_unavailable_reason() -> str | None:
    """None when ONNX Runtime can run on TensorRT here, else why not."""
    reason = cuda_unavailable_reason()
    if reason:
        return reason
    if TENSORRT not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no {TENSORRT}"
    if not _nvinfer_loadable():
        return f"TensorRT's library ({NVINFER}) is not installed (pip install tensorrt)"
    return None


def tensorrt_cache_dir() -> Path:
    """Where TensorRT engines built for this user's graphs are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cadence" / "tensorrt"


def resolve_provider(provider: str = "auto") -> str:
    """"auto" | "cpu" | "cuda" | "tensorrt" -> the ONNX Runtime provider name to ask for."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    if provider == "cpu":
        return CPU
    if provider == "tensorrt":
        reason = tensorrt_unavailable_reason()
        if reason:
            raise RuntimeError(f"provider 'tensorrt' requested but {reason}; use provider='cuda' or 'cpu'")
        return TENSORRT
    reason = cuda_unavailable_reason()
    if provider == "cuda" and reason:
        raise RuntimeError(f"provider 'cuda' requested but {reason}; use provider='cpu' or 'auto'")
    return CPU if reason else CUDA


def _preload_cuda_dlls() -> None:
    """Load CUDA/cuDNN before the first CUDA session (onnxruntime >= 1.21 coexists with torch's copies)."""
    global _dlls_preloaded
    if not _dlls_preloaded and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    _dlls_preloaded = True


def create_session(path: str | os.PathLike, provider: str = "auto", threads: int | None = None,
                   spinning: bool = True, precision: str | None = None, data: bytes | None = None
                   ) -> ort.InferenceSession:
    """An inference session on the resolved provider, logging errors only.

    ``data``: the graph file's bytes as already read and checked (a file from elsewhere): the
    session is built from them, never from a second read of ``path``, which names it in errors.

    ``spinning=False``: the session's threads sleep as soon as a run ends instead of spinning for
    the next one. Right for a graph run once per chunk (the encoder): its spinning threads would
    steal the cores from the denoiser that runs next (measured on 2 cores: image PushT chunk
    143 -> 112 ms). The denoiser, run back to back, keeps spinning (off: 111 -> 128 ms).
    Every session's threads stop spinning when its run returns (``session.force_spinning_stop``):
    two denoiser graphs taking turns (``onnx-cpu-int8``) would otherwise fight over the cores
    (image PushT, int8 for the last 4 of 10 steps: 146 -> 95 ms per chunk).

    ``precision`` (TensorRT only; "fp16" | "int8_qdq"): the reduced-precision graph this is, whose
    kernels TensorRT may then build in float16 / int8 (the fp32 graphs keep float32 arithmetic).

    ``session.get_providers()[0]`` is the provider actually used. A forced "cuda" or "tensorrt"
    that ONNX Runtime silently demotes raises instead.
    """
    name = resolve_provider(provider)
    ort.set_default_logger_severity(QUIET)
    opts = ort.SessionOptions()
    opts.log_severity_level = QUIET
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if name in (CUDA, TENSORRT):
        _preload_cuda_dlls()
    trt = [(TENSORRT, _tensorrt_options(Path(path), precision, data))] if name == TENSORRT else []
    providers = {CPU: [CPU], CUDA: [CUDA, CPU], TENSORRT: [*trt, CUDA, CPU]}[name]
    session = ort.InferenceSession(str(Path(path)) if data is None else data, sess_options=opts, providers=providers)
    used = session.get_providers()[0]
    if provider in ("cuda", "tensorrt") and used != name:
        raise RuntimeError(f"{path}: ONNX Runtime could not start {name} (it fell back to {used}); "
                           "check the CUDA/cuDNN/TensorRT versions onnxruntime-gpu needs")
    return session


def _tensorrt_options(path: Path, precision: str | None, data: bytes | None = None) -> dict:
    digest = hashlib.sha256()
    if data is not None:
        digest.update(data)
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    cache = tensorrt_cache_dir() / digest.hexdigest()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:          # the machine's settings, not the graph's fault
        raise RuntimeError(f"cannot create TensorRT's engine cache {cache} ({exc.strerror}); set XDG_CACHE_HOME "
                           "to a writable folder") from None
    return {"trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8_qdq",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}
