"""Adaptive Caching Scheduler (BAC): the best ``M`` update steps of one branch, by dynamic programming.

Given a branch's similarity matrix ``S`` (n x n, ``S[i, j]`` how alike its outputs at steps
``i`` and ``j`` are), choose update steps ``0 = u_1 < ... < u_M <= n - 1`` maximising

    sum_m  sum_{t = u_m}^{u_{m+1} - 1}  S[u_m, t]        (u_{M+1} = n)

-- the total similarity between the residual computed at each update step and the true ones
at the steps that reuse it. Segments are contiguous, so with ``cost[a, b] = sum_{t=a..b} S[a, t]``:

    dp[1, i] = cost[0, i]
    dp[k, i] = max_{k-2 <= j < i} dp[k-1, j] + cost[j+1, i]

and the answer is ``dp[M, n-1]``, backtracked into the steps. Exact, ``O(M n^2)``; each ``k``
is one vectorised max over a (j, i) table.
"""
from __future__ import annotations

import numpy as np


def segment_costs(similarity: np.ndarray) -> np.ndarray:
    """``cost[a, b] = sum_{t=a..b} S[a, t]`` for ``b >= a`` (``-inf`` below the diagonal)."""
    s = np.asarray(similarity, dtype=np.float64)
    n = s.shape[0]
    cum = np.cumsum(s, axis=1)
    before = np.concatenate([np.zeros((n, 1)), cum[:, :-1]], axis=1)       # sum_{t < a} S[a, t] at column a
    cost = cum - np.diag(before)[:, None]
    cost[np.tril_indices(n, -1)] = -np.inf
    return cost


def schedule_value(similarity: np.ndarray, steps) -> float:
    """The objective for update ``steps`` (ascending, starting at 0)."""
    s = np.asarray(similarity, dtype=np.float64)
    bounds = list(steps) + [s.shape[0]]
    return float(sum(s[a, a:b].sum() for a, b in zip(bounds, bounds[1:])))


def optimal_update_steps(similarity: np.ndarray, updates: int) -> list[int]:
    """The ``updates`` steps (ascending, starting at 0) that maximise :func:`schedule_value`."""
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        raise ValueError(f"similarity must be a square (n, n) matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("similarity has non-finite entries")
    n = s.shape[0]
    if not 1 <= updates <= n:
        raise ValueError(f"updates must be in 1..{n} (the number of sampling steps), got {updates}")
    cost = segment_costs(s)
    # tail[j, i] = cost[j + 1, i]: a new segment starting right after j and ending at i.
    tail = np.full((n, n), -np.inf)
    tail[:-1] = cost[1:]
    dp = np.full((updates + 1, n), -np.inf)
    choice = np.zeros((updates + 1, n), dtype=np.int64)
    dp[1] = cost[0]
    for k in range(2, updates + 1):
        table = dp[k - 1][:, None] + tail              # (j, i); -inf where j >= i or dp[k-1, j] unreachable
        choice[k] = np.argmax(table, axis=0)
        dp[k] = table[choice[k], np.arange(n)]
    steps, end = [], n - 1
    for k in range(updates, 1, -1):
        previous_end = int(choice[k, end])
        steps.append(previous_end + 1)
        end = previous_end
    return [0] + steps[::-1]
