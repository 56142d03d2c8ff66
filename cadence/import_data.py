"""``cadence import format=F source=... out=data/NAME.zarr [options]``: a dataset from another
stack into an episode store (every key, the episode boundaries, the source's metadata).

Formats and their options (``cadence import --help`` prints this):

* ``robomimic``: a robomimic-layout HDF5 (also Isaac Lab's). ``fps`` (20).
* ``robosuite``: a raw robosuite ``demo.hdf5`` (states and actions). ``replay=true`` regenerates
  observations in robosuite, ``cameras=[...]`` with ``image_size=[H,W]`` renders images.
* ``lerobot``: a LeRobot v2.0 / v2.1 / v3.0 dataset directory. ``episodes=[...]``,
  ``videos=false``, ``missing_videos=error|skip``, ``image_size=[H,W]``, ``fps``.
* ``rosbag``: ROS 2 bags (MCAP or SQLite), no ROS needed. ``topics={key: topic}``,
  ``split=bag|TOPIC``, ``align=last|nearest``, ``fps``, ``image_size=[H,W]``.
"""
from __future__ import annotations

from omegaconf import DictConfig

from cadence.datasets.episode_store import StoreError


def _robomimic(cfg: DictConfig):
    from cadence.datasets.robomimic_import import DEFAULT_FPS, import_robomimic
    return import_robomimic(cfg.source, cfg.out, fps=cfg.fps or DEFAULT_FPS, overwrite=cfg.overwrite)


def _robosuite(cfg: DictConfig):
    raise StoreError("format=robosuite: not available yet")


def _lerobot(cfg: DictConfig):
    from cadence.datasets.lerobot_import import import_lerobot
    return import_lerobot(cfg.source, cfg.out, fps=cfg.fps, videos=cfg.videos, overwrite=cfg.overwrite)


def _rosbag(cfg: DictConfig):
    raise StoreError("format=rosbag: not available yet")


FORMATS = {"robomimic": _robomimic, "robosuite": _robosuite, "lerobot": _lerobot, "rosbag": _rosbag}


def run(cfg: DictConfig):
    if cfg.format not in FORMATS:
        raise StoreError(f"format must be one of {sorted(FORMATS)}, got {cfg.format!r}")
    store = FORMATS[cfg.format](cfg)
    print(f"imported {store.n_episodes} episodes ({store.n_steps} steps, keys {store.keys}) -> {store.path}")
    return store

