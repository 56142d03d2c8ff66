"""Several window datasets as one (a multitask suite: one store per member task).

Sample ``i`` of the whole is sample ``i - offset[p]`` of part ``p``; a batch is gathered part by
part and put back in the order asked for. Statistics are those of the union of the parts'
steps (min of minima, max of maxima, step-weighted mean, pooled standard deviation).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .episode_store import StoreError
from .window_dataset import WindowDataset


class ConcatWindows:
    def __init__(self, parts: Sequence[WindowDataset], names: Sequence[str]):
        if not parts:
            raise ValueError("ConcatWindows needs at least one dataset")
        first = parts[0]
        for part, name in zip(parts[1:], names[1:]):
            if part.obs_shapes != first.obs_shapes or part.action_dim != first.action_dim:
                raise StoreError(f"task {name!r} ({part.store.path}) has observations {part.obs_shapes} and "
                                 f"{part.action_dim}-D actions; task {names[0]!r} has {first.obs_shapes} and "
                                 f"{first.action_dim}-D: the members of a suite must match")
        self.parts, self.names = list(parts), list(names)
        self.obs_keys, self.action_key = first.obs_keys, first.action_key
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_episodes(self) -> int:
        return sum(p.n_episodes for p in self.parts)

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.parts[0].obs_shapes

    @property
    def action_dim(self) -> int:
        return self.parts[0].action_dim

    def stats(self, key: str) -> dict[str, np.ndarray]:
        stats = [p.stats(key) for p in self.parts]
        weights = np.array([p.store.n_steps for p in self.parts], dtype=np.float64)
        weights /= weights.sum()
        mean = sum(w * s["mean"] for w, s in zip(weights, stats))
        second = sum(w * (s["std"] ** 2 + s["mean"] ** 2) for w, s in zip(weights, stats))
        return {"min": np.min([s["min"] for s in stats], axis=0), "max": np.max([s["max"] for s in stats], axis=0),
                "mean": mean, "std": np.sqrt(np.maximum(second - mean ** 2, 0.0))}

    def action_chunks_by_task(self) -> list[torch.Tensor]:
        """Each member's action chunks (N_i, Tp, Da), task units, in member order."""
        return [chunks for p in self.parts for chunks in p.action_chunks_by_task()]

    def batch(self, samples: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        samples = samples.cpu().numpy()
        which = np.searchsorted(self.offsets, samples, side="right") - 1
        order, pieces = [], []
        for p in np.unique(which):
            rows = np.flatnonzero(which == p)
            order.append(rows)
            pieces.append(self.parts[p].batch(torch.from_numpy(samples[rows] - self.offsets[p])))
        inverse = torch.from_numpy(np.argsort(np.concatenate(order)))
        return {k: torch.cat([b[k] for b in pieces])[inverse].to(device, non_blocking=True) for k in pieces[0]}
