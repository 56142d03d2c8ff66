"""Training windows held in memory: an episode store's keys as tensors plus a window sampler.

The default task's stores are a few MB, so every key is loaded once and batches are gathered
with tensor indexing (no worker processes, no per-sample Python).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .episode_store import EpisodeStore, StoreError
from .window_sampler import WindowSampler


class WindowDataset:
    def __init__(self, store: EpisodeStore, obs_keys: Sequence[str], action_key: str,
                 obs_horizon: int, pred_horizon: int):
        missing = [k for k in [*obs_keys, action_key] if k not in store.keys]
        if missing:
            raise StoreError(f"{store.path}: the task needs keys {missing}, the store has {store.keys}")
        if store.n_episodes == 0:
            raise StoreError(f"{store.path}: the store holds no episodes")
        self.store = store
        self.obs_keys, self.action_key = list(obs_keys), action_key
        self.sampler = WindowSampler(store.episode_ends, obs_horizon, pred_horizon)
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in store.load([*obs_keys, action_key]).items()}

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(self.arrays[k].shape[1:]) for k in self.obs_keys}

    @property
    def action_dim(self) -> int:
        return int(self.arrays[self.action_key].shape[-1])

    def batch(self, samples: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        obs_idx, act_idx = self.sampler.indices(samples.cpu().numpy())
        batch = {k: self.arrays[k][torch.from_numpy(obs_idx)] for k in self.obs_keys}
        batch[self.action_key] = self.arrays[self.action_key][torch.from_numpy(act_idx)]
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
