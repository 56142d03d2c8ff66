"""DPPO-style baseline (Ren et al., 2024): PPO over the last denoising steps of a DDPM policy, sampled by DDIM.

Each DDIM step ``x_t -> x_prev`` (``eta`` = 1: the stochastic, DDPM-like variant) is a Gaussian policy
``N(mean_t, std_t^2)`` with ``std_t = max(eta * sigma_t, min_std)`` (DPPO clips the std from below,
also on the last step where sigma is 0, so every step explores). Only the last ``ft_steps`` of the
``K`` steps are fine-tuned: earlier ones are sampled by a frozen copy of the pretrained policy and
are not in the likelihood. Log-likelihoods are per denoising step, averaged over the chunk's elements
and clamped to [-5, 2] as in DPPO; PPO takes one ratio per (sample, denoising step) and discounts the
advantage by ``gamma_denoise ** (ft_steps - 1 - j)`` for the j-th fine-tuned step. Evaluation uses the
policy's own deterministic DDIM (eta = 0) with K steps.
"""
from __future__ import annotations

import copy
import math
from typing import Mapping

import torch
from torch import nn

from cadence.policies.action_chunk import ActionChunk

from ..processes.ddim import ddim_step
from ..processes.ddpm import DDPMProcess
from .chain import ChainSample, gaussian_entropy, gaussian_log_prob

LOG_PROB_RANGE = (-5.0, 2.0)


class DPPOActor(nn.Module):
    def __init__(self, policy, ft_steps: int | None = None, min_std: float = 0.1, eta: float = 1.0):
        super().__init__()
        if not isinstance(policy.process, DDPMProcess):
            raise ValueError(f"the DPPO baseline fine-tunes DDPM policies (policy.process=ddpm), "
                             f"got {type(policy.process).__name__}")
        steps = policy.process.sample_steps
        ft_steps = steps if ft_steps is None else ft_steps
        if not 1 <= ft_steps <= steps:
            raise ValueError(f"finetune.dppo.ft_steps must be in 1..{steps} (the sampling steps), got {ft_steps}")
        if min_std <= 0:
            raise ValueError(f"finetune.dppo.min_std must be > 0, got {min_std}")
        self.policy, self.ft_steps, self.min_std, self.eta = policy, ft_steps, min_std, eta
        ts, alphas = policy.process.timesteps(), policy.process.alphas_cumprod.tolist()
        # per DDIM step: (timestep, alpha-bar there, alpha-bar at the next step; 1 after the last)
        self._schedule = [(t, alphas[t], alphas[ts[i + 1]] if i + 1 < len(ts) else 1.0) for i, t in enumerate(ts)]
        frozen = copy.deepcopy(policy).requires_grad_(False) if ft_steps < steps else None
        self._frozen = [frozen]     # a list: not a registered submodule, so not trained nor saved

    @property
    def steps(self) -> int:
        return self.policy.process.sample_steps

    def _mean_std(self, policy, x: torch.Tensor, i: int, cond: torch.Tensor):
        t, a, a_prev = self._schedule[i]
        eps = policy.denoiser(x, torch.full((x.shape[0],), float(t), device=x.device), cond)
        sigma = self.eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        mean = ddim_step(x, a, a_prev, eps=eps, clip_sample=self.policy.process.clip_sample, sigma=sigma)
        return mean, torch.full_like(mean, max(sigma, self.min_std))

    def _cond(self, policy, obs):
        return policy.encoder(obs, policy.normalizer)

    def _score(self, obs, chain: torch.Tensor):
        """(log_prob (B, ft_steps), entropy (B,)) of the fine-tuned steps of ``chain`` (B, K + 1, Tp, Da)."""
        cond = self._cond(self.policy, obs)
        first = self.steps - self.ft_steps
        log_probs, entropy = [], 0.0
        for i in range(first, self.steps):
            mean, std = self._mean_std(self.policy, chain[:, i], i, cond)
            log_probs.append(gaussian_log_prob(chain[:, i + 1], mean, std).flatten(1).mean(-1).clamp(*LOG_PROB_RANGE))
            entropy = entropy + gaussian_entropy(std).flatten(1).mean(-1)
        return torch.stack(log_probs, dim=1), entropy / self.ft_steps

    @torch.no_grad()
    def explore(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                progress: float = 0.0) -> ChainSample:
        p, first = self.policy, self.steps - self.ft_steps
        frozen = self._frozen[0]
        conds = {id(p): self._cond(p, obs)}
        if frozen is not None:
            conds[id(frozen)] = self._cond(frozen, obs)
        b = conds[id(p)].shape[0]
        x = torch.randn((b, p.pred_horizon, p.action_dim), generator=generator, device=conds[id(p)].device)
        chain = [x]
        for i in range(self.steps):
            actor = p if i >= first else frozen
            mean, std = self._mean_std(actor, x, i, conds[id(actor)])
            x = mean + std * torch.randn(x.shape, generator=generator, device=x.device)
            chain.append(x)
        chain = torch.stack(chain, dim=1)
        log_prob, _ = self._score(obs, chain)
        return ChainSample(chain, ActionChunk(p.normalizer.unnormalize(p.action_key, x), start=p.obs_horizon - 1),
                           log_prob)

    def log_prob(self, obs: Mapping[str, torch.Tensor], chain: torch.Tensor, progress: float = 0.0):
        return self._score(obs, chain)

    def act(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> ActionChunk:
        return self.policy.predict_chunk(obs, generator=generator)
