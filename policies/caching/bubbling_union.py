"""Bubbling Union (BAC): refresh the most volatile branches whenever a downstream feed-forward is.

Caching a branch at a step where a later feed-forward branch is recomputed feeds that
feed-forward a stale input, and the error grows through the layers. The Bubbling Union
ranks the branches by volatility (how much their output changes across sampling steps), takes
the ``top`` most volatile, and adds to each of them the update steps of every feed-forward
branch in its own layer and the layers after it. It only ever adds steps.
"""
from __future__ import annotations

from typing import Mapping

FEED_FORWARD = "ffn"


def layer_of(key: str) -> int:
    """``blocks.<i>.<branch>`` -> ``i``."""
    try:
        prefix, index, _ = key.split(".")
        if prefix != "blocks":
            raise ValueError
        return int(index)
    except ValueError:
        raise ValueError(f"branch key {key!r} is not of the form blocks.<i>.<branch>") from None


def most_volatile(volatility: Mapping[str, float], top: int) -> list[str]:
    """The ``top`` branch keys of highest volatility (ties by network order)."""
    order = list(volatility)
    return sorted(order, key=lambda k: (-volatility[k], order.index(k)))[:max(0, top)]


def bubbling_union(update_steps: Mapping[str, list[int]], selected) -> dict[str, list[int]]:
    """Each ``selected`` branch also updates at every step of the feed-forward branches in layers
    at or after its own (their steps before the union). Other branches are unchanged."""
    ffn = {k: v for k, v in update_steps.items() if k.rsplit(".", 1)[-1] == FEED_FORWARD}
    out = {k: list(v) for k, v in update_steps.items()}
    for key in selected:
        if key not in update_steps:
            raise KeyError(f"unknown branch {key!r}")
        layer = layer_of(key)
        merged = set(update_steps[key])
        for other, steps in ffn.items():
            if layer_of(other) >= layer:
                merged.update(steps)
        out[key] = sorted(merged)
    return out
