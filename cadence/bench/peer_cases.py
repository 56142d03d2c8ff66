"""The configurations ``cadence bench peer`` runs in both stacks: PushT's shapes with Diffusion
Policy's 1-D UNet, (a) on low-dimensional state and (b) on a camera image with ResNet-18.

A case is plain JSON (the peer's worker runs in another virtual environment and reads it from its
command line); :func:`cadence_policy` builds cadence's side of it with random weights.
"""
from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

COMMON = {"action_dim": 2, "obs_horizon": 2, "pred_horizon": 16, "exec_horizon": 8,
          "down_dims": [256, 512, 1024], "kernel_size": 5, "n_groups": 8}
CASES = {
    # PushT low-dim: agent position (2) + block keypoints (18); LeRobot takes them as two keys.
    "lowdim": {**COMMON, "state_dim": 2, "env_state_dim": 18, "level_embed_dim": 256},
    # PushT image: 96x96 RGB centre-cropped to 84x84, ResNet-18 (GroupNorm, 32-keypoint spatial softmax).
    "image": {**COMMON, "state_dim": 2, "image": [3, 96, 96], "crop": [84, 84], "level_embed_dim": 128},
}


def chunks_for(steps: int, chunks: int) -> int:
    """Chunks timed per round at ``steps`` sampling steps: a fifth of them beyond 10 steps."""
    return chunks if steps <= 10 else max(1, chunks // 5)


def obs_shapes(case: dict) -> dict[str, tuple[int, ...]]:
    """cadence's observation keys for ``case``: ``state`` (the low-dim parts joined), ``image`` HWC."""
    shapes = {"state": (case["state_dim"] + case.get("env_state_dim", 0),)}
    if case.get("image"):
        channels, height, width = case["image"]
        shapes["image"] = (height, width, channels)
    return shapes


def cadence_policy(case: dict, seed: int):
    """cadence's policy for ``case`` (DDPM, 100 training levels, epsilon prediction), random weights."""
    from cadence.config import PolicyConfig
    from cadence.datasets.normalizer import Normalizer
    from cadence.policies.factory import build_policy

    shapes = obs_shapes(case)
    overrides = {"process": "ddpm", "diffusion_steps": 100, "down_dims": case["down_dims"],
                 "kernel_size": case["kernel_size"], "n_groups": case["n_groups"],
                 "level_embed_dim": case["level_embed_dim"], "obs_horizon": case["obs_horizon"],
                 "pred_horizon": case["pred_horizon"], "exec_horizon": case["exec_horizon"]}
    if case.get("image"):
        overrides.update(image_encoder="resnet18", image_feature_dim=64, crop=case["crop"][0] / case["image"][1])
    cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig), overrides)
    stats = {"state": {"min": np.full(shapes["state"], -1.0), "max": np.full(shapes["state"], 1.0)},
             "action": {"min": np.full(case["action_dim"], -1.0), "max": np.full(case["action_dim"], 1.0)}}
    torch.manual_seed(seed)
    norm = Normalizer.from_stats(stats, {"state": "limits", "action": "limits"})
    return build_policy(cfg, shapes, case["action_dim"], norm).eval()


def observation(case: dict, seed: int) -> dict[str, np.ndarray]:
    """One batch-1 observation window for cadence (each key (1, To, ...); the image uint8 HWC)."""
    rng = np.random.default_rng(seed)
    t = case["obs_horizon"]
    obs = {"state": rng.uniform(-1, 1, (1, t, case["state_dim"] + case.get("env_state_dim", 0))).astype(np.float32)}
    if case.get("image"):
        channels, height, width = case["image"]
        obs["image"] = rng.integers(0, 256, (1, t, height, width, channels), dtype=np.uint8)
    return obs
