"""A task's training data: its windows (a suite's concatenated), the episodes held out for
offline validation, and the normalizer fitted to them."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from cadence.datasets.concat_windows import ConcatWindows
from cadence.datasets.episode_split import default_val_episodes, split_episodes
from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.normalizer import Normalizer
from cadence.datasets.window_dataset import WindowDataset, is_image_shape
from cadence.task_suite import is_suite, member_tasks

log = logging.getLogger(__name__)


def load_windows(task_cfg, obs_horizon: int, pred_horizon: int,
                 episodes=None) -> WindowDataset | ConcatWindows:
    """The task's training windows (of ``episodes`` only, if given); a multitask suite's members'
    windows, concatenated."""
    members = member_tasks(task_cfg)
    for member in members:
        if not Path(member.dataset).exists():
            raise StoreError(f"{member.dataset}: no episode store here; create it with "
                             f"`cadence collect task={task_cfg.name}` or set task.dataset=PATH")
    parts = [WindowDataset.for_task(m, obs_horizon, pred_horizon, episodes=episodes) for m in members]
    return ConcatWindows(parts, [m.name for m in members]) if is_suite(task_cfg) else parts[0]


def held_out_episodes(cfg: DictConfig, resumed: list[int] | None = None) -> tuple[np.ndarray | None, list[int]]:
    """``(train episodes or None for all, validation episodes)``: ``train.val_episodes`` of the
    store's episodes drawn by ``train.seed`` (default: 10% without a simulator, none with one).
    ``resumed``: the episodes a resumed run held out, kept whatever the store or the command
    line says now (episodes recorded since join the training ones)."""
    if is_suite(cfg.task):
        if cfg.train.val_episodes:
            raise ValueError("train.val_episodes: offline validation of a multitask suite is not supported")
        return None, []
    n_episodes = EpisodeStore.open(cfg.task.dataset).n_episodes
    if resumed is not None:
        if resumed and max(resumed) >= n_episodes:
            raise StoreError(f"{cfg.task.dataset}: has {n_episodes} episodes, but the run being resumed held out "
                             f"episode {max(resumed)}: not the store it was trained on")
        if cfg.train.val_episodes not in (None, len(resumed)):
            log.warning("resume: keeping the %d episodes the run held out; ignoring train.val_episodes=%s",
                        len(resumed), cfg.train.val_episodes)
        return (np.setdiff1d(np.arange(n_episodes), resumed) if resumed else None), list(resumed)
    n_val = cfg.train.val_episodes
    if n_val is None:
        n_val = default_val_episodes(n_episodes) if cfg.task.env_id is None else 0
    if n_val == 0:
        return None, []
    train, val = split_episodes(n_episodes, n_val, cfg.train.seed)
    return train, val.tolist()


def fit_normalizer(dataset: WindowDataset | ConcatWindows, mode: str) -> Normalizer:
    keys = [k for k, shape in dataset.obs_shapes.items() if not is_image_shape(shape)] + [dataset.action_key]
    normalizer = Normalizer.from_stats({k: dataset.stats(k) for k in keys}, {k: mode for k in keys})
    for key in keys:
        if not normalizer.in_range(key):
            raise StoreError(f"data/{key}: its statistics give a normaliser float32 cannot use (a range of zero "
                             f"or nearly, or values too large): {dataset.stats(key)}"[:400])
    return normalizer
