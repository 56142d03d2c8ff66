"""Build a :class:`Policy` from its config, the data's shapes and a fitted normalizer."""
from __future__ import annotations

from typing import Mapping, Sequence

from .networks.unet1d import ConditionalUnet1D
from .obs_encoder import ObsEncoder
from .policy import Policy
from .processes import DDPMProcess, RectifiedFlowProcess, RegressionProcess

PROCESSES = ("ddpm", "flow", "regression")


def build_process(cfg):
    if cfg.process == "ddpm":
        return DDPMProcess(cfg.diffusion_steps, cfg.sample_steps, cfg.clip_sample)
    if cfg.process == "flow":
        return RectifiedFlowProcess(cfg.sample_steps)
    if cfg.process == "regression":
        return RegressionProcess()
    raise ValueError(f"policy.process must be one of {PROCESSES}, got {cfg.process!r}")


def build_policy(cfg, obs_shapes: Mapping[str, Sequence[int]], action_dim: int, normalizer,
                 action_key: str = "action") -> Policy:
    """``cfg``: a PolicyConfig (see cadence.config)."""
    if cfg.pred_horizon < cfg.obs_horizon - 1 + cfg.exec_horizon:
        raise ValueError(f"policy.pred_horizon ({cfg.pred_horizon}) must cover obs_horizon - 1 + exec_horizon "
                         f"({cfg.obs_horizon - 1 + cfg.exec_horizon})")
    encoder = ObsEncoder(obs_shapes, cfg.obs_horizon, cfg.obs_feature_dim, image_feature_dim=cfg.image_feature_dim,
                         image_encoder=cfg.image_encoder, crop=cfg.crop)
    denoiser = ConditionalUnet1D(action_dim, encoder.out_dim, tuple(cfg.down_dims), cfg.kernel_size,
                                 cfg.n_groups, cfg.level_embed_dim)
    return Policy(normalizer, encoder, denoiser, build_process(cfg), cfg.obs_horizon, cfg.pred_horizon,
                  action_dim, action_key=action_key)
