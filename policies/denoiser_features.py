"""What a policy's own denoiser sees in a candidate chunk: the ``denoiser`` input of the value verifier.

:class:`DenoiserFeatures` holds a frozen copy of the policy's UNet (:class:`ConditionalUnet1D`)
and runs it on each candidate with no noise drawn, at a few points of the process (``noise``
fractions, 0 clean .. 1 pure noise; by default 0.05, 0.2 and 0.5): the candidate normalized as
the policy normalizes actions, scaled as the process scales a clean chunk at that point
(:meth:`~cadence.policies.processes.base.ProcessBase.clean_input`), with the observation's
conditioning. Per point it keeps the middle blocks' output, each earlier down stage's output
averaged over time, and the network's output (its noise or velocity prediction), standardized
by the mean and spread over the candidates it was fitted on. On PushT these rank a policy's
candidates far better than the actions themselves (docs/search.md): the network already knows
which chunks look like the demonstrations from this observation.

The candidate from ``start`` (what the verifier is given) is padded at the front with copies of
its first action up to the policy's ``pred_horizon``. The copy travels inside the verifier, so a
saved verifier (and its ONNX graph) needs nothing else.
"""
from __future__ import annotations

import torch
from torch import nn

from cadence.policies.networks.unet1d import ConditionalUnet1D

DEFAULT_NOISE = (0.05, 0.2, 0.5)


class DenoiserFeatures(nn.Module):
    """(cond (B, C), plans (B, K, P, Da) in task units) -> (B, K, width) standardized features."""

    def __init__(self, unet: dict, pred_horizon: int, points: int):
        super().__init__()
        self.unet = ConditionalUnet1D(**unet).requires_grad_(False)
        self.pred_horizon, self.points = pred_horizon, points
        da, dims = unet["action_dim"], unet["down_dims"]
        per_point = sum(dims[:-1]) + dims[-1] * (pred_horizon // self.unet.down_factor) + pred_horizon * da
        self.width = points * per_point
        for name, size in (("action_scale", da), ("action_offset", da), ("signal", points), ("level", points),
                           ("mean", self.width), ("std", self.width)):
            self.register_buffer(name, torch.ones(size) if name in ("action_scale", "std") else torch.zeros(size))

    @classmethod
    def from_policy(cls, policy, noise=DEFAULT_NOISE) -> "DenoiserFeatures":
        """The features of ``policy``'s denoiser at these ``noise`` points; ValueError naming what
        is missing when its network is not a UNet or its process has no clean input."""
        net, process = policy.denoiser, policy.process
        if type(net) is not ConditionalUnet1D:
            raise ValueError(f"denoiser features need a UNet denoiser (policy.network=unet); this policy's is "
                             f"{type(net).__name__}: use features=plan")
        points = [process.clean_input(float(n)) for n in noise]
        if not noise or None in points:
            raise ValueError(f"denoiser features need a process with a clean input (ddpm, flow); this policy's "
                             f"is {process.name!r}: use features=plan")
        features = cls(net.spec, policy.pred_horizon, len(points))
        features.unet.load_state_dict(net.state_dict())
        scale, offset = policy.normalizer.params(policy.action_key)
        features.action_scale.copy_(scale.flatten())
        features.action_offset.copy_(offset.flatten())
        features.signal.copy_(torch.tensor([s for s, _ in points]))
        features.level.copy_(torch.tensor([lv for _, lv in points]))
        return features.to(next(net.parameters()).device)

    def raw(self, cond: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        """The features before standardization: (B, K, width)."""
        b, k, p, da = plans.shape
        pad = self.pred_horizon - p
        chunk = torch.cat([plans[:, :, :1].expand(b, k, pad, da), plans], dim=2).flatten(0, 1)
        x0 = chunk * self.action_scale + self.action_offset
        n, points = b * k, self.points
        x = (self.signal[:, None, None, None] * x0).flatten(0, 1)             # (points * n, Tp, Da)
        level = self.level[:, None].expand(points, n).reshape(-1)
        c = cond[None, :, None].expand(points, b, k, cond.shape[-1]).reshape(points * n, -1)
        out, skips, mid = self.unet.taps(x, level, c)
        parts = [*(s.mean(dim=-1) for s in skips[:-1]), mid.flatten(1), out.flatten(1)]
        return torch.cat(parts, dim=-1).reshape(points, b, k, -1).permute(1, 2, 0, 3).reshape(b, k, -1)

    def forward(self, cond: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        return (self.raw(cond, plans) - self.mean) / self.std
