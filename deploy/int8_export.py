"""The 8-bit denoiser graph (``cadence export int8=true``; fitted and written by
:mod:`cadence.deploy.reduced_precision`).

Batch-1 sampling on a CPU is memory-bound: every denoiser call reads all the weights. The int8
graph holds them in 8 bits (ONNX Runtime ``MatMulNBits``, symmetric blocks of 32 along the input,
int8 activations: ``accuracy_level`` 4), so a call reads a quarter of the bytes. ``MatMulNBits``
quantizes MatMuls only, so the network's 1-D convolutions are first rewritten as MatMul
(:func:`cadence.deploy.convs_as_matmul.convs_as_matmul`, exact).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import onnx

BITS, BLOCK, ACCURACY_LEVEL = 8, 32, 4


@contextlib.contextmanager
def _quiet_quantizer():
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def quantize_matmuls(src: Path, dst: Path) -> None:
    """``src``'s constant-weight MatMuls as 8-bit ``MatMulNBits`` (block 32, int8 compute) -> ``dst``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=ACCURACY_LEVEL,
                                          bits=BITS)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    with _quiet_quantizer():
        quantizer.process()
    tmp = dst.with_name(dst.name + ".tmp")
    quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    tmp.replace(dst)
