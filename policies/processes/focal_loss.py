"""Sigmoid focal loss (Lin et al., 2017), the confidence loss of truncated anchor diffusion.

``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` per element, with ``p = sigmoid(logit)``,
``p_t = p`` where the target is 1 and ``1 - p`` where it is 0, ``alpha_t = alpha`` for
positives and ``1 - alpha`` for negatives; averaged over all elements (mmdet's
``py_sigmoid_focal_loss`` with reduction "mean").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    targets = targets.to(logits.dtype)
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")    # = -log(p_t), stable
    return (alpha_t * (1 - p_t) ** gamma * bce).mean()
