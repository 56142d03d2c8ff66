"""``cadence collect``: write scripted-expert episodes into the task's episode store.

An existing store is appended to (its fps, keys and per-step shapes must match; an episode
that does not is refused before anything is written). The episodes continue the seeds rather
than repeat them: the expert draws them from seed ``collect.seed + n``, where ``n`` is the
number of episodes already in the store. ``collect.overwrite=true`` builds a new store beside
the old one and swaps it in when complete (``datasets/staged_store.py``), so a killed collect
leaves the old store or the new one, never neither.
"""
from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.staged_store import recover, staged_store
from cadence.envs.demonstrations import expert_episodes, renders_afterwards
from cadence.envs.robosuite_render import StateRenderer, split_render_kwargs
from cadence.task_suite import is_suite, member_tasks


def collect(task_cfg, collect_cfg, progress: bool = True) -> dict:
    """Run ``collect_cfg.episodes`` expert episodes and write the successful ones into the
    task's store (appended, or into a new one with ``overwrite``); returns a summary."""
    if task_cfg.env_id is None or task_cfg.expert in (None, "none"):
        missing = "no simulator" if task_cfg.env_id is None else "no scripted expert"
        raise StoreError(f"task {task_cfg.name} has {missing} to collect with; bring your recordings with "
                         "`cadence import` instead")
    path = Path(task_cfg.dataset)
    recover(path)
    if collect_cfg.overwrite:
        target = staged_store(path, task_cfg.fps)
    else:
        target = nullcontext(EpisodeStore.open(path, mode="a") if path.exists()
                             else EpisodeStore.create(path, fps=task_cfg.fps))
    with target as store:
        if store.fps is not None and store.fps != task_cfg.fps:
            raise StoreError(f"{path}: holds episodes recorded at {store.fps} fps, task {task_cfg.name} "
                             f"records at {task_cfg.fps} (collect.overwrite=true replaces the store)")
        seed = collect_cfg.seed + store.n_episodes
        summary = _collect_into(store, task_cfg, collect_cfg.episodes, seed, progress)
    return {"path": str(path), "seed": seed, **summary, "total_episodes": store.n_episodes, "steps": store.n_steps}


def _collect_into(store: EpisodeStore, task_cfg, episodes: int, seed: int, progress: bool) -> dict:
    """Robosuite tasks with cameras are collected without them (fast), then their camera images
    are rendered from each kept episode's ``sim_state`` before it is written."""
    kept, outcomes, modes = 0, Counter(), Counter()
    env_kwargs = dict(task_cfg.env_kwargs)
    render_later = renders_afterwards(task_cfg.expert, env_kwargs)
    pending = []     # episodes waiting for their camera images
    bar = tqdm(total=episodes, desc=f"collect {task_cfg.name}", disable=not progress, dynamic_ncols=True)
    for episode, info in expert_episodes(task_cfg.expert, task_cfg.env_id, episodes, seed,
                                         split_render_kwargs(env_kwargs)[0] if render_later else env_kwargs):
        outcomes[bool(info.get("is_success"))] += 1
        if info.get("is_success"):
            if render_later:
                pending.append(episode)
            else:
                store.append_episode(episode)
            modes[info.get("mode", "none")] += 1
            kept += 1
        bar.update(1)
    bar.close()
    if pending:
        with StateRenderer(task_cfg.env_id, env_kwargs) as renderer:
            for episode in tqdm(pending, desc=f"render {task_cfg.name} cameras", disable=not progress,
                                dynamic_ncols=True):
                episode.update(renderer.render(episode["sim_state"]))
                store.append_episode(episode)
    return {"episodes": kept, "expert_success_rate": outcomes[True] / max(1, sum(outcomes.values())),
            "modes": dict(modes)}


def report(summary: dict) -> str:
    return (f"wrote {summary['episodes']} episodes (expert seed {summary['seed']}) to {summary['path']}, "
            f"which holds {summary['total_episodes']} episodes ({summary['steps']} steps); "
            f"expert success {summary['expert_success_rate']:.3f}, modes {summary['modes']}")


def collect_missing(task_cfg, collect_cfg, progress: bool = True) -> dict[str, dict]:
    """Collect the task's store (each member's, for a multitask suite) where it does not exist yet."""
    summaries = {}
    for member in member_tasks(task_cfg):
        if not Path(member.dataset).exists():
            summaries[member.name] = collect(member, collect_cfg, progress=progress)
            print(report(summaries[member.name]))
    return summaries


def run(cfg: DictConfig) -> dict:
    summaries = {}
    for member in member_tasks(cfg.task):      # a multitask suite: each member's store
        summaries[member.name] = collect(member, cfg.collect)
        print(report(summaries[member.name]))
    return summaries if is_suite(cfg.task) else summaries[cfg.task.name]
