"""``cadence import format=robomimic source=FILE.hdf5 out=data/NAME.zarr`` or
``cadence import format=lerobot source=DIR out=data/NAME.zarr [videos=false]``: a dataset from
another stack into an episode store (every key, the episode boundaries, the source's metadata)."""
from __future__ import annotations

from omegaconf import DictConfig

from cadence.datasets.episode_store import StoreError

FORMATS = ("robomimic", "lerobot")


def run(cfg: DictConfig):
    if cfg.format not in FORMATS:
        raise StoreError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    if cfg.format == "lerobot":
        from cadence.datasets.lerobot_import import import_lerobot
        store = import_lerobot(cfg.source, cfg.out, fps=cfg.fps, videos=cfg.videos, overwrite=cfg.overwrite)
    else:
        from cadence.datasets.robomimic_import import DEFAULT_FPS, import_robomimic
        store = import_robomimic(cfg.source, cfg.out, fps=cfg.fps or DEFAULT_FPS, overwrite=cfg.overwrite)
    print(f"imported {store.n_episodes} episodes ({store.n_steps} steps, keys {store.keys}) -> {store.path}")
    return store
