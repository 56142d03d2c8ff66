"""ResNet-18 encoder: the architecture, GroupNorm only, crops, and several cameras in a policy."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cadence.config import PolicyConfig
from cadence.datasets.normalizer import Normalizer
from cadence.policies.factory import build_policy
from cadence.policies.resnet_encoder import ResNet18ImageEncoder


def frames(n=3, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8))


def test_resnet18_layout_with_group_norm_and_spatial_softmax():
    enc = ResNet18ImageEncoder(feature_dim=64)
    n_params = sum(p.numel() for p in enc.backbone.parameters())
    assert 11.1e6 < n_params < 11.2e6                          # torchvision's resnet18 trunk: 11.18M
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in enc.modules()) == 20
    assert enc(frames(2, 84)).shape == (2, 64) and enc(frames(2, 96)).shape == (2, 64)
    with pytest.raises(ValueError, match="H, W, 3"):
        enc(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_inference_uses_the_centre_crop():
    torch.manual_seed(0)
    cropped = ResNet18ImageEncoder(16, crop=0.75).eval()
    full = ResNet18ImageEncoder(16, crop=1.0).eval()
    full.load_state_dict(cropped.state_dict())
    x = frames(2, 32)
    assert torch.allclose(cropped(x), full(x[:, 4:28, 4:28]), atol=1e-5)


def test_training_crops_are_random_per_image_and_follow_the_generator():
    enc = ResNet18ImageEncoder(16, crop=0.75).train()
    x = frames(8, 32)
    crops = enc._crop(x, torch.Generator().manual_seed(1))
    assert crops.shape == (8, 24, 24, 3)
    offsets = set()
    for i in range(8):        # every crop is a window of its own image
        hits = [(t, l) for t in range(9) for l in range(9) if torch.equal(crops[i], x[i, t:t + 24, l:l + 24])]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 1
    same = enc._crop(x, torch.Generator().manual_seed(1))
    assert torch.equal(crops, same) and not torch.equal(crops, enc._crop(x, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="crop"):
        ResNet18ImageEncoder(16, crop=1.5)


def test_a_policy_fuses_two_cameras_and_state():
    cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig),
                          {"process": "flow", "down_dims": [16, 32], "level_embed_dim": 16, "obs_feature_dim": 16,
                           "image_feature_dim": 16, "image_encoder": "resnet18", "crop": 0.875, "sample_steps": 2})
    stats = {"state": {"min": np.full(6, -1.0), "max": np.full(6, 1.0)},
             "action": {"min": np.full(2, -1.0), "max": np.full(2, 1.0)}}
    torch.manual_seed(0)
    norm = Normalizer.from_stats(stats, {"state": "limits", "action": "limits"})
    with pytest.raises(ValueError, match="1x1 feature map"):
        build_policy(cfg, {"state": (6,), "agentview": (32, 32, 3)}, 2, norm)
    policy = build_policy(cfg, {"state": (6,), "agentview": (64, 64, 3), "wrist": (64, 64, 3)}, 2, norm)
    assert set(policy.encoder.images) == {"agentview", "wrist"}
    batch = {"state": torch.rand(4, 2, 6), "agentview": frames(8, 64).view(4, 2, 64, 64, 3),
             "wrist": frames(8, 64, seed=1).view(4, 2, 64, 64, 3), "action": torch.rand(4, 16, 2)}
    loss = policy.compute_loss(batch, generator=torch.Generator().manual_seed(3))
    loss.backward()
    assert torch.isfinite(loss) and policy.encoder.images["wrist"].backbone[0].weight.grad.abs().sum() > 0
    again = policy.compute_loss(batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loss.detach(), again.detach())                   # crops drawn from the generator
    policy.eval()
    chunk = policy.predict_chunk({k: v[:1] for k, v in batch.items() if k != "action"})
    assert chunk.actions.shape == (1, 16, 2)
