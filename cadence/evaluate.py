"""``cadence eval checkpoint=RUN_DIR``: a checkpoint's success in simulation (see
:mod:`cadence.sim_eval`) and its offline validation on held-out or new recordings."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from cadence import distributed
from cadence.offline_eval import format_offline, offline_validate, write_offline
from cadence.sim_eval import evaluate_policy, format_summary, set_sample_steps, set_search


def _offline(policy, train_cfg, meta: dict, cfg: DictConfig, out_dir: Path, device, title: str) -> dict:
    """Offline validation of a checkpoint: on its held-out episodes of its own store, or on every
    episode of ``dataset=`` (recordings it never saw)."""
    from cadence.datasets.episode_store import StoreError
    from cadence.datasets.window_dataset import WindowDataset

    task = train_cfg.task
    if cfg.dataset:
        task.dataset = cfg.dataset
    data = WindowDataset.for_task(task, train_cfg.policy.obs_horizon, train_cfg.policy.pred_horizon)
    episodes = list(range(data.n_episodes)) if cfg.dataset else meta["val_episodes"]
    if not episodes:
        raise StoreError(f"{task.dataset}: the checkpoint held out no episodes (train.val_episodes=0) and it has "
                         "no simulator; pass dataset=PATH to validate on other recordings")
    if max(episodes) >= data.n_episodes:
        raise StoreError(f"{task.dataset}: has {data.n_episodes} episodes, but the checkpoint held out episode "
                         f"{max(episodes)}: not the store it was trained on")
    offline = offline_validate(policy, data, episodes, train_cfg.policy.exec_horizon, cfg.eval.offline_samples,
                               cfg.eval.seed, device, out_dir, cfg.eval.offline_plot_episodes, title)
    write_offline(offline, out_dir)
    return offline


def run(cfg: DictConfig) -> dict | None:
    """``cadence eval``; under ``torchrun`` the ranks share the episodes and rank 0 reports."""
    from cadence.checkpoint import load_policy, resolve_checkpoint_dir

    ranks = distributed.setup(cfg.device)
    try:
        ckpt = resolve_checkpoint_dir(cfg.checkpoint)
        policy, train_cfg, meta = load_policy(ckpt, ranks.device, block_cache=cfg.block_cache, env_id=cfg.env_id)
        set_sample_steps(policy, cfg.eval.sample_steps)
        set_search(policy, cfg.eval.search, ckpt, range(cfg.eval.seed, cfg.eval.seed + cfg.eval.episodes))
        out_dir = Path(cfg.out_dir) if cfg.out_dir else ckpt.parent / f"eval-{datetime.now():%Y%m%d-%H%M%S}"
        title = f"{train_cfg.policy.name} @ step {meta['step']}"
        summary = None
        if train_cfg.task.env_id is not None and cfg.eval.episodes > 0:
            summary, _ = evaluate_policy(policy, train_cfg.task, train_cfg.policy, cfg.eval, out_dir, ranks.device,
                                         progress=ranks.main, title=title, ranks=ranks)
            if ranks.main:
                print(f"{train_cfg.policy.name}: {format_summary(summary)}")
        if ranks.main and (cfg.dataset or meta["val_episodes"] or train_cfg.task.env_id is None):
            offline = _offline(policy, train_cfg, meta, cfg, out_dir, ranks.device, title)
            summary = {**(summary or {}), "offline": offline}
            print(f"{train_cfg.policy.name}: {format_offline(offline)}")
        if ranks.main:
            print(f"results in {out_dir}")
        return summary
    finally:
        distributed.teardown(ranks)
