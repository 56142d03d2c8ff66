"""K-means on flattened action chunks: the anchors of truncated anchor diffusion.

k-means++ seeding then Lloyd iterations, in torch, seeded by a generator (no sklearn, no
global RNG). A cluster that loses all its points is re-seeded at the point farthest from its
centre, so every one of the ``k`` centres stays a real prototype (taken from a cluster that has more than one point).
"""
from __future__ import annotations

import torch


def kmeans(points: torch.Tensor, k: int, iters: int = 100, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``points`` (N, D) -> (centres (k, D), labels (N,)). Needs N >= k."""
    if points.ndim != 2:
        raise ValueError(f"kmeans needs (N, D) points, got shape {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans needs 1 <= k <= number of points ({n}), got k={k}")
    points = points.double()
    centres = _plus_plus(points, k, generator)
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(points, centres)
        new = dist.argmin(dim=1)
        own = dist.gather(1, new[:, None]).squeeze(1)
        for c in range(k):               # an emptied cluster takes the worst-served point of a shared cluster
            counts = torch.bincount(new, minlength=k)
            if counts[c] == 0:
                far = torch.where(counts[new] > 1, own, -1.0).argmax()
                new[far] = c
                own[far] = 0.0
        if torch.equal(new, labels):
            break
        labels = new
        centres = torch.zeros_like(centres).index_add_(0, labels, points) \
            / torch.bincount(labels, minlength=k).clamp(min=1)[:, None].double()
    return centres.float(), labels


def _plus_plus(points: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    n = points.shape[0]
    first = torch.randint(0, n, (1,), generator=generator)
    centres = [points[first[0]]]
    nearest = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:                    # fewer distinct points than k: any point will do
            pick = torch.randint(0, n, (1,), generator=generator)[0]
        else:
            pick = torch.multinomial((nearest / total).float(), 1, generator=generator)[0]
        centres.append(points[pick])
        nearest = torch.minimum(nearest, ((points - points[pick]) ** 2).sum(1))
    return torch.stack(centres)
