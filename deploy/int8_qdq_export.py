"""The int8 denoiser in ONNX's QDQ form, for TensorRT (``cadence export int8_qdq=true``; fitted
and written by :mod:`cadence.deploy.reduced_precision`).

TensorRT does not take ONNX Runtime's ``MatMulNBits`` (the CPU's int8 graph,
:mod:`cadence.deploy.int8_export`); it quantizes explicitly from QuantizeLinear/DequantizeLinear
pairs. This graph has them around the convolutions only: symmetric int8 weights per output
channel and symmetric int8 activations whose ranges are calibrated (min/max) on the denoiser's
real inputs at the sampling steps of the calibration windows. The level and observation MLPs and
the FiLM layers stay float32: quantizing them too moved a random-weight UNet's DDIM-10 chunk by
45% of the action range with int8 at every step, against 1.6% for the convolutions alone (measured
by hand on this CPU). ONNX Runtime's CPU provider runs the same graph, which is how its steps are
fitted and tested here.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

QUANTIZED_OPS = ["Conv", "ConvTranspose"]


def to_int8_qdq(src: Path, dst: Path, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
    """``src`` with its convolutions quantized to int8 in QDQ form, activation ranges from ``feeds``
    (the graph's inputs, one dict per call) -> ``dst``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Feeds(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)            # the quantizer warns through the root logger to pre-process first
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        quantize_static(str(src), str(tmp), _Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    finally:
        root.setLevel(level)
    tmp.replace(dst)
