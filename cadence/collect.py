"""``cadence collect``: write scripted-expert episodes into the task's episode store."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.envs.demonstrations import expert_episodes, renders_afterwards
from cadence.envs.robosuite_render import StateRenderer, split_render_kwargs
from cadence.task_suite import is_suite, member_tasks



def collect(task_cfg, collect_cfg, progress: bool = True) -> dict:
    """Collect ``collect_cfg.episodes`` successful expert episodes; returns a summary.

    Robosuite tasks with cameras are collected without them (fast), then their camera images
    are rendered from each kept episode's ``sim_state`` before it is written."""
    path = Path(task_cfg.dataset)
    if path.exists() and not collect_cfg.overwrite:
        raise StoreError(f"{path} already exists; pass collect.overwrite=true to replace it "
                         f"or task.dataset=OTHER_PATH to write elsewhere")
    store = EpisodeStore.create(path, fps=task_cfg.fps, overwrite=collect_cfg.overwrite)
    kept, outcomes, modes = 0, Counter(), Counter()
    env_kwargs = dict(task_cfg.env_kwargs)
    render_later = renders_afterwards(task_cfg.expert, env_kwargs)
    pending = []     # episodes waiting for their camera images
    bar = tqdm(total=collect_cfg.episodes, desc=f"collect {task_cfg.name}", disable=not progress, dynamic_ncols=True)
    for episode, info in expert_episodes(task_cfg.expert, task_cfg.env_id, collect_cfg.episodes, collect_cfg.seed,
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
    total = sum(outcomes.values())
    summary = {"path": str(path), "episodes": kept, "steps": store.n_steps,
               "expert_success_rate": outcomes[True] / max(1, total), "modes": dict(modes)}
    return summary


def report(summary: dict) -> str:
    return (f"wrote {summary['episodes']} episodes ({summary['steps']} steps) to {summary['path']}; "
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
        if is_suite(cfg.task) and Path(member.dataset).exists() and not cfg.collect.overwrite:
            print(f"kept {member.dataset} (task {member.name}; collect.overwrite=true replaces it)")
            continue
        summaries[member.name] = collect(member, cfg.collect)
        print(report(summaries[member.name]))
    return summaries if is_suite(cfg.task) else summaries[cfg.task.name]
