"""Training windows held in memory: an episode store's keys as tensors plus a window sampler.

The default task's stores are a few MB, so every key is loaded once and batches are gathered
with tensor indexing (no worker processes, no per-sample Python).

``slices`` derive an observation key from a stored one, ``{name: [key, start, stop]}`` on the
last axis (PushT's ``agent_pos`` is ``state[..., 0:2]`` of the Diffusion Policy store), so a
store written elsewhere is read in place. Images (``(H, W, 3)`` per step) stored as floats in
[0, 255] (that store's ``img``) are held as uint8, a quarter of the memory. ``constants`` add
observation keys that are the same at every step and are not stored (a multitask suite's
one-hot ``task_id``). ``episodes`` restricts the windows to some of the store's episodes (the
rest held out for validation); statistics are then those of these episodes alone.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from .episode_store import EpisodeStore, StoreError
from .window_sampler import WindowSampler

TASK_ID_KEY = "task_id"


class WindowDataset:
    def __init__(self, store: EpisodeStore, obs_keys: Sequence[str], action_key: str,
                 obs_horizon: int, pred_horizon: int, slices: Mapping[str, Sequence] | None = None,
                 constants: Mapping[str, Sequence[float]] | None = None, episodes: Sequence[int] | None = None):
        self.slices = _check_slices(slices or {}, store)
        self.constants = {k: np.asarray(v, dtype=np.float32) for k, v in (constants or {}).items()}
        stored = [self.slices[k][0] if k in self.slices else k for k in obs_keys if k not in self.constants]
        missing = [k for k in [*stored, action_key] if k not in store.keys]
        if missing:
            raise StoreError(f"{store.path}: the task needs keys {missing}, the store has {store.keys}")
        if store.n_episodes == 0:
            raise StoreError(f"{store.path}: the store holds no episodes")
        self.store = store
        self.obs_keys, self.action_key = list(obs_keys), action_key
        self.episodes = None if episodes is None else np.asarray(episodes, dtype=np.int64)
        if self.episodes is not None and (len(self.episodes) == 0 or self.episodes.min() < 0
                                          or self.episodes.max() >= store.n_episodes):
            raise StoreError(f"{store.path}: episodes {list(self.episodes)[:5]}... are not a non-empty subset of "
                             f"its {store.n_episodes} episodes")
        self.sampler_ends = store.episode_ends
        self.sampler = WindowSampler(self.sampler_ends, obs_horizon, pred_horizon, episodes=self.episodes)
        loaded = store.load(sorted({*stored, action_key}))
        self.arrays = {}
        for key in [*self.obs_keys, action_key]:
            if key in self.constants:
                self.arrays[key] = torch.from_numpy(self.constants[key]).expand(store.n_steps, -1)
                continue
            if key in self.slices:
                parent, start, stop = self.slices[key]
                values = loaded[parent][..., start:stop]
            else:
                values = loaded[key]
            if is_image_shape(values.shape[1:]) and values.dtype.kind == "f":
                values = _float_image_to_uint8(values)
            self.arrays[key] = torch.from_numpy(np.ascontiguousarray(values))

    @classmethod
    def for_task(cls, task, obs_horizon: int, pred_horizon: int,
                 episodes: Sequence[int] | None = None) -> "WindowDataset":
        """The windows a task config names: its store, observation keys, slices and action key."""
        task_id = task.get("task_id")
        return cls(EpisodeStore.open(task.dataset), list(task.obs_keys), task.action_key, obs_horizon,
                   pred_horizon, slices=dict(task.get("obs_slices") or {}),
                   constants={TASK_ID_KEY: list(task_id)} if task_id else None, episodes=episodes)

    def episode_rows(self, episode: int) -> np.ndarray:
        """The store rows (time steps) of one episode."""
        ends = self.sampler_ends
        return np.arange(0 if episode == 0 else ends[episode - 1], ends[episode])

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """Per-element statistics of a key (a sliced key: its slice of the stored key's); over the
        chosen ``episodes`` when the windows are restricted to some."""
        if self.episodes is not None and key not in self.constants:
            rows = np.concatenate([self.episode_rows(e) for e in self.episodes])
            values = self.arrays[key][torch.from_numpy(rows)].double().numpy()
            return {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0)}
        if key in self.constants:
            value = self.constants[key].astype(np.float64)
            return {"min": value, "max": value, "mean": value, "std": np.zeros_like(value)}
        if key in self.slices:
            parent, start, stop = self.slices[key]
            return {name: v[..., start:stop] for name, v in self.store.stats(parent).items()}
        return self.store.stats(key)

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def n_episodes(self) -> int:
        return self.store.n_episodes if self.episodes is None else len(self.episodes)

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(self.arrays[k].shape[1:]) for k in self.obs_keys}

    @property
    def action_dim(self) -> int:
        return int(self.arrays[self.action_key].shape[-1])

    def action_chunks_by_task(self) -> list[torch.Tensor]:
        """Every window's action chunk (N, Tp, Da), task units, as a one-task list."""
        _, act_idx = self.sampler.indices(np.arange(len(self)))
        return [self.arrays[self.action_key][torch.from_numpy(act_idx)]]

    def batch(self, samples: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        obs_idx, act_idx = self.sampler.indices(samples.cpu().numpy())
        batch = {k: self.arrays[k][torch.from_numpy(obs_idx)] for k in self.obs_keys}
        batch[self.action_key] = self.arrays[self.action_key][torch.from_numpy(act_idx)]
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def is_image_shape(shape: Sequence[int]) -> bool:
    """Per-step shape of a camera image: (H, W, 3). Everything else is low-dimensional."""
    return len(shape) == 3 and shape[-1] == 3


def _check_slices(slices: Mapping[str, Sequence], store: EpisodeStore) -> dict[str, tuple[str, int, int]]:
    checked = {}
    for name, spec in slices.items():
        spec = list(spec)
        if len(spec) != 3 or not isinstance(spec[0], str) or not all(isinstance(i, int) for i in spec[1:]):
            raise StoreError(f"task.obs_slices.{name} must be [stored_key, start, stop], got {spec}")
        key, start, stop = spec
        if key not in store.keys:
            raise StoreError(f"{store.path}: task.obs_slices.{name} reads key {key!r}, the store has {store.keys}")
        width = store.features[key].shape[-1] if store.features[key].shape else 0
        if not 0 <= start < stop <= width:
            raise StoreError(f"task.obs_slices.{name} = {spec}: [{start}:{stop}] is outside {key}'s "
                             f"last axis of size {width}")
        checked[name] = (key, start, stop)
    return checked


def _float_image_to_uint8(values: np.ndarray, block: int = 4096) -> np.ndarray:
    out = np.empty(values.shape, dtype=np.uint8)
    for i in range(0, len(values), block):
        out[i:i + block] = np.clip(np.rint(values[i:i + block]), 0, 255)
    return out
