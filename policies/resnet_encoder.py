"""ResNet-18 image encoder as Diffusion Policy uses it: GroupNorm, spatial-softmax pooling, crops.

The standard ResNet-18 layout (7x7 stem, max-pool, four stages of two basic blocks, 64 to 512
channels), written here because torchvision is optional, with every BatchNorm replaced by
GroupNorm (``channels // 16`` groups): BatchNorm's running statistics break under the EMA
weights and small batches of diffusion training. The global average pool is replaced by
spatial softmax (expected image position per channel), then a linear projection.

Crops (``crop`` < 1: the side fraction kept): a random crop per image in training, the
centre crop at inference, so the exported graph is deterministic. Trains from scratch;
pretrained weights cannot be downloaded here.
"""
from __future__ import annotations

import torch
from torch import nn

from .image_encoder import SpatialSoftmax


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // 16, channels)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(y)) + self.skip(x))


class ResNet18ImageEncoder(nn.Module):
    def __init__(self, feature_dim: int = 64, crop: float = 1.0):
        super().__init__()
        if not 0 < crop <= 1:
            raise ValueError(f"crop must be a fraction in (0, 1], got {crop}")
        self.crop = crop
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.backbone = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), _norm(64), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1), *stages)
        self.pool = SpatialSoftmax()
        self.proj = nn.Linear(2 * 512, feature_dim)
        self.feature_dim = feature_dim

    def check_image_size(self, height: int, width: int) -> None:
        """Spatial softmax over a 1x1 feature map is constant (no gradient reaches the images):
        the cropped image must leave at least 2x2 after the trunk's 32x downsampling."""
        ch, cw = max(1, round(height * self.crop)), max(1, round(width * self.crop))
        if min(-(-ch // 32), -(-cw // 32)) < 2:
            raise ValueError(f"images of {height}x{width} cropped to {ch}x{cw} leave a 1x1 feature map after "
                             f"ResNet-18's 32x downsampling: spatial softmax would see one position and pass no "
                             f"gradient. Use at least 33 px per side after the crop (e.g. 84x84 with crop 0.9).")

    def _crop(self, frames: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, h, w, _ = frames.shape
        ch, cw = max(1, round(h * self.crop)), max(1, round(w * self.crop))
        if (ch, cw) == (h, w):
            return frames
        if not self.training:
            top, left = (h - ch) // 2, (w - cw) // 2
            return frames[:, top: top + ch, left: left + cw]
        top = torch.randint(0, h - ch + 1, (n,), generator=generator, device=generator.device if generator else None)
        left = torch.randint(0, w - cw + 1, (n,), generator=generator, device=generator.device if generator else None)
        top, left = top.to(frames.device), left.to(frames.device)
        rows = (top[:, None] + torch.arange(ch, device=frames.device))[:, :, None]     # (N, ch, 1)
        cols = (left[:, None] + torch.arange(cw, device=frames.device))[:, None, :]    # (N, 1, cw)
        return frames[torch.arange(n, device=frames.device)[:, None, None], rows, cols]

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) images, got {tuple(frames.shape)}")
        x = self._crop(frames, generator).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.proj(self.pool(self.backbone(x)))
