"""ReinFlow (Zhang et al., NeurIPS'25): a flow policy's Euler path made a Markov chain with exact likelihood.

With ``K`` steps of size 1/K at times ``t_k = k / K`` (the same grid when sampling and when
rescoring, unlike the reference whose two grids differ):

    a^0 ~ N(0, I),   a^{k+1} ~ N(mu_k, diag sigma_k^2),   mu_k = a^k + v(a^k, t_k, s) / K,
    sigma_k = ExplorationNoise(s, t_k),
    log pi(a^{0:K} | s) = log N(a^0; 0, I) + sum_k log N(a^{k+1}; mu_k, sigma_k^2).

The executed chunk is a^K. ``reduce="mean"`` divides the log-likelihood by (K + 1) * Tp * Da (the
reference's per-dimension scale for the PPO ratio; ``"sum"`` keeps the exact total). The velocity is the
process's (rectified flow, or a shortcut model told the step 1/K). Evaluation drops the noise:
:meth:`act` is the pretrained policy's own K-step Euler sampler.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from cadence.policies.action_chunk import ActionChunk

from ..processes.rectified_flow import euler_integrate
from .chain import ChainSample, gaussian_entropy, gaussian_log_prob
from .exploration_noise import ExplorationNoise

REDUCTIONS = ("mean", "sum")


class ReinFlowActor(nn.Module):
    def __init__(self, policy, noise: ExplorationNoise, reduce: str = "mean"):
        super().__init__()
        if policy.process.finetune_method != "reinflow":
            raise ValueError(f"ReinFlow fine-tunes flow policies (policy.process=flow or shortcut), "
                             f"got {type(policy.process).__name__}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"finetune.logprob_reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.policy, self.noise, self.reduce = policy, noise, reduce

    @property
    def steps(self) -> int:
        return self.policy.process.sample_steps

    def _cond(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.encoder(obs, self.policy.normalizer)

    def _mean_std(self, x: torch.Tensor, k: int, cond: torch.Tensor, progress: float):
        p, K = self.policy.process, self.steps
        mean = x + p.velocity(self.policy.denoiser, x, k / K, cond, K) / K
        return mean, self.noise(cond, k / K, progress).view_as(x)

    def _score(self, cond: torch.Tensor, chain: torch.Tensor, progress: float):
        """(log_prob (B,), mean entropy per element and step (B,)) of ``chain`` (B, K + 1, Tp, Da)."""
        log_prob = gaussian_log_prob(chain[:, 0], torch.zeros_like(chain[:, 0]), torch.ones_like(chain[:, 0])).flatten(1).sum(-1)
        entropy = torch.zeros_like(log_prob)
        for k in range(self.steps):
            mean, std = self._mean_std(chain[:, k], k, cond, progress)
            log_prob = log_prob + gaussian_log_prob(chain[:, k + 1], mean, std).flatten(1).sum(-1)
            entropy = entropy + gaussian_entropy(std).flatten(1).mean(-1)
        if self.reduce == "mean":
            log_prob = log_prob / ((self.steps + 1) * chain[0, 0].numel())
        return log_prob, entropy / self.steps

    @torch.no_grad()
    def explore(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                progress: float = 0.0) -> ChainSample:
        cond = self._cond(obs)
        p = self.policy
        x = torch.randn((cond.shape[0], p.pred_horizon, p.action_dim), generator=generator, device=cond.device)
        chain = [x]
        for k in range(self.steps):
            mean, std = self._mean_std(x, k, cond, progress)
            x = mean + std * torch.randn(x.shape, generator=generator, device=x.device)
            chain.append(x)
        chain = torch.stack(chain, dim=1)
        log_prob, _ = self._score(cond, chain, progress)
        return ChainSample(chain, self._chunk(x), log_prob)

    def log_prob(self, obs: Mapping[str, torch.Tensor], chain: torch.Tensor, progress: float = 0.0):
        """Rescore stored chains under the current weights: (log_prob (B,), entropy (B,))."""
        return self._score(self._cond(obs), chain, progress)

    def ode(self, obs: Mapping[str, torch.Tensor], start: torch.Tensor) -> torch.Tensor:
        """The deterministic K-step Euler path from ``start`` (normalised), with gradient (the W2 regulariser)."""
        cond, K = self._cond(obs), self.steps
        return euler_integrate(lambda x, t, k: self.policy.process.velocity(self.policy.denoiser, x, t, cond, K),
                               start, K)

    def act(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> ActionChunk:
        return self.policy.predict_chunk(obs, generator=generator)

    def _chunk(self, x: torch.Tensor) -> ActionChunk:
        p = self.policy
        return ActionChunk(p.normalizer.unnormalize(p.action_key, x), start=p.obs_horizon - 1)
