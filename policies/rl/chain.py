"""What an actor's exploration returns: the sampled chain, the chunk it executes, its log-likelihood."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cadence.policies.action_chunk import ActionChunk


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class ChainSample:
    chain: torch.Tensor       # (B, S, Tp, Da) normalised chain states, noise first, executed chunk last
    chunk: ActionChunk        # the last state in task units
    log_prob: torch.Tensor    # (B,) ReinFlow: the whole chain; (B, K') DPPO: per fine-tuned denoising step


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - _HALF_LOG_2PI


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy of N(., std^2)."""
    return 0.5 + _HALF_LOG_2PI + torch.log(std)
