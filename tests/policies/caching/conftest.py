import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cadence.config import PolicyConfig
from cadence.datasets.normalizer import Normalizer
from cadence.policies.factory import build_policy

STATS = {"state": {"min": np.full(6, -2.0), "max": np.full(6, 2.0)},
         "action": {"min": np.array([-1.5, -1.0]), "max": np.array([1.5, 1.5])}}


def transformer_policy(process="ddpm", sample_steps=12, experts=0, cross_attention=False, seed=0):
    cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig), {
        "process": process, "network": "transformer", "sample_steps": sample_steps, "diffusion_steps": 24,
        "pred_horizon": 8, "exec_horizon": 4, "obs_feature_dim": 16,
        "transformer": {"d_model": 16, "n_layers": 3, "n_heads": 2, "num_experts": experts,
                        "cross_attention": cross_attention}})
    torch.manual_seed(seed)
    norm = Normalizer.from_stats(STATS, {"state": "limits", "action": "limits"})
    return build_policy(cfg, {"state": (6,)}, 2, norm).eval()


@pytest.fixture
def observations():
    return {"state": torch.rand(10, 2, 6, generator=torch.Generator().manual_seed(3)) * 4 - 2}
