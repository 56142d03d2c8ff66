"""The float16 denoiser graph (``cadence export fp16=true``; fitted and written by
:mod:`cadence.deploy.reduced_precision`).

The fp32 graph with every weight and operation in float16 (ONNX Runtime's own converter,
``onnxruntime.transformers.float16``), its inputs and outputs kept float32, so the host sampling
loop feeds it like the fp32 graph. Half the bytes per call and a GPU's float16 tensor cores; on a
CPU, ONNX Runtime runs it with casts around the operators it has no float16 kernel for (correct,
not fast: it is a GPU's graph, measured for accuracy on the CPU).
"""
from __future__ import annotations

from pathlib import Path

import onnx


def to_fp16(src: Path, dst: Path) -> None:
    """``src`` converted to float16 inside, float32 at its inputs and outputs -> ``dst``."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
