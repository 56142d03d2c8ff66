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

from omegaconf import DictConfig, OmegaConf

from cadence.datasets.episode_store import StoreError


def _plain(value):
    """A command-line list or dict as plain Python (the importers check plain values)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _robomimic(cfg: DictConfig):
    from cadence.datasets.robomimic_import import DEFAULT_FPS, import_robomimic
    return import_robomimic(cfg.source, cfg.out, fps=cfg.fps or DEFAULT_FPS, overwrite=cfg.overwrite,
                            episodes=_plain(cfg.episodes))


def _robosuite(cfg: DictConfig):
    from cadence.datasets.robosuite_import import import_robosuite
    return import_robosuite(cfg.source, cfg.out, fps=cfg.fps, overwrite=cfg.overwrite, replay=cfg.replay,
                            cameras=_plain(cfg.cameras), image_size=_plain(cfg.image_size),
                            episodes=_plain(cfg.episodes))


def _lerobot(cfg: DictConfig):
    from cadence.datasets.lerobot_import import import_lerobot
    return import_lerobot(cfg.source, cfg.out, fps=cfg.fps, videos=cfg.videos, overwrite=cfg.overwrite,
                          episodes=_plain(cfg.episodes), missing_videos=cfg.missing_videos,
                          image_size=_plain(cfg.image_size))


def _rosbag(cfg: DictConfig):
    from cadence.datasets.rosbag_import import import_rosbag
    return import_rosbag(cfg.source, cfg.out, topics=_plain(cfg.topics), fps=cfg.fps, split=cfg.split,
                         align=cfg.align, episodes=_plain(cfg.episodes), image_size=_plain(cfg.image_size),
                         overwrite=cfg.overwrite)


FORMATS = {"robomimic": _robomimic, "robosuite": _robosuite, "lerobot": _lerobot, "rosbag": _rosbag}
# the options each format takes besides source, out, fps, overwrite and episodes
OPTIONS = {"robomimic": set(), "robosuite": {"replay", "cameras", "image_size"},
           "lerobot": {"videos", "missing_videos", "image_size"}, "rosbag": {"topics", "split", "align", "image_size"}}


def _given_elsewhere(cfg: DictConfig) -> list[str]:
    """Options set on the command line that the chosen format does not take."""
    from cadence.config import ImportApp

    defaults = OmegaConf.structured(ImportApp)
    others = set().union(*OPTIONS.values()) - OPTIONS[cfg.format]
    return sorted(k for k in others if _plain(cfg[k]) != _plain(defaults[k]))


def run(cfg: DictConfig):
    if cfg.format not in FORMATS:
        raise StoreError(f"format must be one of {sorted(FORMATS)}, got {cfg.format!r}")
    ignored = _given_elsewhere(cfg)
    if ignored:
        raise StoreError(f"format={cfg.format} does not take {ignored} (cadence import --help lists each "
                         "format's options)")
    store = FORMATS[cfg.format](cfg)
    print(f"imported {store.n_episodes} episodes ({store.n_steps} steps, keys {store.keys}) -> {store.path}")
    return store

