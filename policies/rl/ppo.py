"""PPO pieces over chunk-level decisions: generalised advantage estimation and the clipped surrogate.

``gae`` works on (T, N) arrays of one rollout of N environments, where ``next_values[t]`` is the
critic's value of the state reached after decision t (the final observation for an episode cut by
the time limit, 0 after termination). The surrogate takes log-likelihoods of shape (B,) — one ratio
per decision, ReinFlow — or (B, K') — one per fine-tuned denoising step, DPPO, whose advantage is
then discounted by ``step_weights`` (K',).
"""
from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        ended: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (T, N). ``ended`` = terminated or truncated: no credit flows across it."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * (~terminated[t]) - values[t]
        running = delta + gamma * lam * (~ended[t]) * running
        advantages[t] = running
    return advantages, advantages + values


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip: float,
                      step_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """PPO's policy loss ``-E[min(r A, clip(r, 1 - clip, 1 + clip) A)]`` and its diagnostics
    (``ratio_max_dev``: the largest |r - 1|, ``approx_kl``, ``clipfrac``)."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    adv = advantages if log_prob.ndim == 1 else advantages[:, None]
    if step_weights is not None:
        adv = adv * step_weights
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    with torch.no_grad():
        stats = {"ratio_max_dev": float((ratio - 1).abs().max()),
                 "approx_kl": float(((ratio - 1) - log_ratio).mean()),
                 "clipfrac": float(((ratio - 1).abs() > clip).float().mean())}
    return loss, stats


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / (x.std() + 1e-8) if x.numel() > 1 else x - x.mean()
