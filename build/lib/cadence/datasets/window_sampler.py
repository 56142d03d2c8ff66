"""Window sampler: index windows of ``To`` observations and ``Tp`` actions from episodes.

Every step ``t`` of every episode is a sample's *current* step. Its window holds the
observations at ``t-To+1 .. t`` and the actions at ``t-To+1 .. t-To+Tp`` (Diffusion Policy's
alignment: the chunk starts with the observed steps, and the actions to execute start at
index ``To-1`` of the chunk). Steps outside the episode are edge-padded: they repeat the
episode's first or last step, which for absolute position targets means "hold still".
"""
from __future__ import annotations

import numpy as np


class WindowSampler:
    def __init__(self, episode_ends: np.ndarray, obs_horizon: int, pred_horizon: int,
                 episodes: np.ndarray | None = None):
        if obs_horizon < 1 or pred_horizon < obs_horizon:
            raise ValueError(f"need 1 <= obs_horizon <= pred_horizon, got To={obs_horizon}, Tp={pred_horizon}")
        ends = np.asarray(episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        chosen = np.arange(len(ends)) if episodes is None else np.asarray(episodes)
        self.obs_horizon, self.pred_horizon = obs_horizon, pred_horizon
        self._current = np.concatenate([np.arange(starts[e], ends[e]) for e in chosen]) if len(chosen) else np.zeros(0, np.int64)
        self._first = np.concatenate([np.full(ends[e] - starts[e], starts[e]) for e in chosen]) if len(chosen) else np.zeros(0, np.int64)
        self._last = np.concatenate([np.full(ends[e] - starts[e], ends[e] - 1) for e in chosen]) if len(chosen) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._current)

    def indices(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store indices ``(obs (N, To), actions (N, Tp))`` for sample numbers ``samples``."""
        samples = np.asarray(samples)
        t, first, last = self._current[samples, None], self._first[samples, None], self._last[samples, None]
        base = t - (self.obs_horizon - 1)
        obs = np.clip(base + np.arange(self.obs_horizon), first, last)
        act = np.clip(base + np.arange(self.pred_horizon), first, last)
        return obs, act
