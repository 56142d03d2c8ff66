"""ONNX Runtime execution providers: pick one that can really run, open quiet sessions.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` even on machines without a GPU, and a
session asked for it there fills stderr with library-loading errors before falling back to
the CPU. So "auto" takes CUDA only when ONNX Runtime lists it *and* torch sees a GPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import torch

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDERS = ("auto", "cpu", "cuda")
QUIET = 3            # ONNX Runtime log severity: 0 verbose .. 3 error, 4 fatal

_dlls_preloaded = False


def cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime can run on CUDA here, else why not."""
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no {CUDA} (install onnxruntime-gpu)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def resolve_provider(provider: str = "auto") -> str:
    """"auto" | "cpu" | "cuda" -> the ONNX Runtime provider name to ask for."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    if provider == "cpu":
        return CPU
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
                   spinning: bool = True) -> ort.InferenceSession:
    """An inference session on the resolved provider, logging errors only.

    ``spinning=False``: the session's threads sleep as soon as a run ends instead of spinning for
    the next one. Right for a graph run once per chunk (the encoder): its spinning threads would
    steal the cores from the denoiser that runs next (measured on 2 cores: image PushT chunk
    143 -> 112 ms). The denoiser, run back to back, keeps spinning (off: 111 -> 128 ms).
    Every session's threads stop spinning when its run returns (``session.force_spinning_stop``):
    two denoiser graphs taking turns (``onnx-cpu-int8``) would otherwise fight over the cores
    (image PushT, int8 for the last 4 of 10 steps: 146 -> 95 ms per chunk).

    ``session.get_providers()[0]`` is the provider actually used. A forced "cuda" that
    ONNX Runtime silently demotes to the CPU raises instead.
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
    if name == CUDA:
        _preload_cuda_dlls()
    providers = [CUDA, CPU] if name == CUDA else [CPU]
    session = ort.InferenceSession(str(Path(path)), sess_options=opts, providers=providers)
    used = session.get_providers()[0]
    if provider == "cuda" and used != CUDA:
        raise RuntimeError(f"{path}: ONNX Runtime could not start {CUDA} (it fell back to {used}); "
                           "check the CUDA/cuDNN versions onnxruntime-gpu needs")
    return session
