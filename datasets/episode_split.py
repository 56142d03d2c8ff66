"""Held-out episodes for offline validation: a seeded split of a store's episodes, never trained on."""
from __future__ import annotations

import numpy as np


def default_val_episodes(n_episodes: int) -> int:
    """10% of the episodes, at least 1 and at most 50, leaving at least one to train on."""
    return 0 if n_episodes < 2 else int(np.clip(round(0.1 * n_episodes), 1, 50))


def split_episodes(n_episodes: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` episode indices, each sorted: ``n_val`` drawn by ``seed``, the rest to train."""
    if not 0 <= n_val < n_episodes:
        raise ValueError(f"train.val_episodes must be in [0, {n_episodes - 1}] for a store of {n_episodes} "
                         f"episodes (at least one left to train on), got {n_val}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
