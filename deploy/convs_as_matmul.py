"""A network's 1-D convolutions rewritten as matrix products, the same function to float rounding.

ONNX Runtime's 8-bit weight kernel (``MatMulNBits``) takes MatMul nodes only, so the int8 export
(:mod:`cadence.deploy.int8_export`) first turns every ``Conv1d`` into an unfold + MatMul over
(kernel x channels) columns, and every ``ConvTranspose1d`` into zero insertion + padding + the
same with the kernel flipped. Batch-1 sampling reads each weight once per call either way.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _columns(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """(B, C, T) already padded -> (B, T', kernel * C): each output position's inputs, kernel-major."""
    cols = x.unfold(2, kernel, stride)                          # B, C, T', k
    return cols.permute(0, 2, 3, 1).reshape(x.shape[0], cols.shape[2], kernel * x.shape[1])


class Conv1dMatMul(nn.Module):
    """``nn.Conv1d`` (zero padding, no dilation, one group) as unfold + MatMul."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1,) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"cannot rewrite {conv}: only ungrouped, undilated convolutions with numeric zero padding")
        self.kernel, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        # (O, C, k) -> (k * C, O), matching _columns' order
        self.weight = nn.Parameter(conv.weight.detach().permute(2, 1, 0).reshape(-1, conv.out_channels).contiguous())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _columns(F.pad(x, (self.padding, self.padding)), self.kernel, self.stride) @ self.weight
        return (out if self.bias is None else out + self.bias).transpose(1, 2)


class ConvTranspose1dMatMul(nn.Module):
    """``nn.ConvTranspose1d`` (no output padding, dilation or groups) as zero insertion + MatMul."""

    def __init__(self, conv: nn.ConvTranspose1d):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1,) or conv.output_padding != (0,):
            raise ValueError(f"cannot rewrite {conv}: only ungrouped, undilated, without output padding")
        self.kernel, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        if self.padding > self.kernel - 1:
            raise ValueError(f"cannot rewrite {conv}: padding larger than kernel - 1")
        flipped = conv.weight.detach().flip(2)                  # (C, O, k)
        self.weight = nn.Parameter(flipped.permute(2, 0, 1).reshape(-1, flipped.shape[1]).contiguous())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        s = self.stride
        spread = torch.cat([x[..., None], x.new_zeros(b, c, t, s - 1)], dim=-1).reshape(b, c, s * t)
        spread = spread[..., :s * (t - 1) + 1]                  # stride - 1 zeros between inputs
        pad = self.kernel - 1 - self.padding
        out = _columns(F.pad(spread, (pad, pad)), self.kernel, 1) @ self.weight
        return (out if self.bias is None else out + self.bias).transpose(1, 2)


def convs_as_matmul(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with each ``Conv1d``/``ConvTranspose1d`` replaced by its MatMul form."""
    net = copy.deepcopy(net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Conv1d:
                setattr(module, name, Conv1dMatMul(child))
            elif type(child) is nn.ConvTranspose1d:
                setattr(module, name, ConvTranspose1dMatMul(child))
    return net
