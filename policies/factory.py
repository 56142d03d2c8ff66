"""Build a :class:`Policy` from its config, the data's shapes and a fitted normalizer."""
from __future__ import annotations

from typing import Mapping, Sequence

from cadence.datasets.window_dataset import TASK_ID_KEY

from .networks.anchor_decoder import AnchorDecoder
from .networks.mlp import MLPDenoiser
from .networks.transformer import TransformerDenoiser
from .networks.unet1d import ConditionalUnet1D
from .obs_encoder import ObsEncoder
from .policy import Policy
from .processes.base import process_class, process_names

NETWORKS = ("unet", "transformer", "mlp", "anchor_decoder")


def build_process(cfg, action_dim: int = 0, num_tasks: int = 1):
    """The process ``policy.process`` names, from the registry (:mod:`.processes.base`)."""
    return process_class(cfg.process).from_config(cfg, action_dim, num_tasks)


def build_policy(cfg, obs_shapes: Mapping[str, Sequence[int]], action_dim: int, normalizer,
                 action_key: str = "action") -> Policy:
    """``cfg``: a PolicyConfig (see cadence.config)."""
    if cfg.pred_horizon < cfg.obs_horizon - 1 + cfg.exec_horizon:
        raise ValueError(f"policy.pred_horizon ({cfg.pred_horizon}) must cover obs_horizon - 1 + exec_horizon "
                         f"({cfg.obs_horizon - 1 + cfg.exec_horizon})")
    required = process_class(cfg.process).network
    dedicated = {process_class(n).network: n for n in process_names() if process_class(n).network}
    if (cfg.network != required) if required else cfg.network in dedicated:
        owner = required and cfg.process or dedicated[cfg.network]
        raise ValueError(f"policy.process={owner} goes with policy.network={required or cfg.network} (and only it), "
                         f"got process={cfg.process!r}, network={cfg.network!r}")
    encoder = ObsEncoder(obs_shapes, cfg.obs_horizon, cfg.obs_feature_dim, image_feature_dim=cfg.image_feature_dim,
                         image_encoder=cfg.image_encoder, crop=cfg.crop)
    num_tasks = int(obs_shapes[TASK_ID_KEY][0]) if TASK_ID_KEY in obs_shapes else 1
    process = build_process(cfg, action_dim, num_tasks)
    cond_dim = encoder.out_dim + process.extra_cond_dim      # e.g. a shortcut's step-size code
    return Policy(normalizer, encoder, build_denoiser(cfg, action_dim, cond_dim), process,
                  cfg.obs_horizon, cfg.pred_horizon, action_dim, action_key=action_key)


def build_denoiser(cfg, action_dim: int, cond_dim: int):
    if cfg.network == "unet":
        return ConditionalUnet1D(action_dim, cond_dim, tuple(cfg.down_dims), cfg.kernel_size, cfg.n_groups,
                                 cfg.level_embed_dim)
    if cfg.network == "transformer":
        t = cfg.transformer
        return TransformerDenoiser(action_dim, cond_dim, cfg.pred_horizon, t.d_model, t.n_layers, t.n_heads,
                                   t.cond_tokens, t.attention, t.cross_attention, t.ffn_mult, t.dropout,
                                   t.num_experts, t.top_k, t.balance_weight, t.expert_cache)
    if cfg.network == "mlp":
        return MLPDenoiser(action_dim, cfg.pred_horizon, cond_dim, cfg.mlp.width, cfg.mlp.n_layers, cfg.level_embed_dim)
    if cfg.network == "anchor_decoder":
        a = cfg.anchor
        return AnchorDecoder(action_dim, cfg.pred_horizon, cond_dim, a.d_model, a.n_layers, a.n_heads, a.cond_tokens,
                             a.ffn_mult, cfg.level_embed_dim)
    raise ValueError(f"policy.network must be one of {NETWORKS}, got {cfg.network!r}")

