"""``cadence import format=robomimic source=FILE.hdf5 out=data/NAME.zarr``: a dataset from another
stack into an episode store (every key, the episode boundaries, the source's metadata)."""
from __future__ import annotations

from omegaconf import DictConfig

from cadence.datasets.episode_store import StoreError

FORMATS = ("robomimic",)


def run(cfg: DictConfig):
    if cfg.format not in FORMATS:
        raise StoreError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    from cadence.datasets.robomimic_import import DEFAULT_FPS, import_robomimic
    store = import_robomimic(cfg.source, cfg.out, fps=cfg.fps or DEFAULT_FPS, overwrite=cfg.overwrite)
    print(f"imported {store.n_episodes} episodes ({store.n_steps} steps, keys {store.keys}) -> {store.path}")
    return store
