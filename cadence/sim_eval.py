"""Evaluation in simulation: rollouts on fixed seeds, batch-1 latency, video and trajectory plot.

The library side of ``cadence eval``: training, fine-tuning, the demo and the benchmarks call
:func:`evaluate_policy` directly.

The episodes run in waves of ``eval.batch_size`` (0: all at once) in one vector env each,
stepped in worker processes with ``eval.async_envs``. Wave ``k`` seeds the sampling noise with
its own number, and under ``torchrun`` the ranks take the waves in turn (rank ``k % world``) and
rank 0 gathers them, so the outcomes depend on the seeds and the batch size only: the same with
one process or many, in this process or in workers. Bit for bit only with the same torch thread
count: the network's sums round differently with the number of threads (as with the batch size),
and the episodes then differ in their last bits, or more where the closed loop amplifies that.
"""
from __future__ import annotations

import json
import logging
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from cadence import distributed

from cadence.envs import DEFAULT_TASK_ID   # importing cadence.envs registers the tasks
from cadence.envs.env_pools import EnvPools
from cadence.envs.task_env import env_module, make_env
from cadence.task_suite import is_suite, member_tasks
from cadence.envs.rendering import rendering_problem
from cadence.envs.rollout import RolloutResult, rollout, vector_env
from cadence.envs.trajectory_plot import plot_trajectories
from cadence.deploy.budget import time_calls
from cadence.envs.video import check_video_format, save_video
from cadence.envs.worker_memory import check_worker_memory

log = logging.getLogger(__name__)


def set_sample_steps(policy, steps: int | None) -> None:
    """Override the number of sampling steps of a trained policy (DDIM / Euler)."""
    policy.process = policy.process.with_steps(steps)


def set_search(policy, search_cfg, checkpoint_dir: Path | None = None, eval_seeds: range | None = None) -> None:
    """Search over start noises at every prediction when ``search_cfg.candidates`` > 1 (else none),
    with the verifier ``resolve_verifier`` gives (a trained value verifier refused on its training seeds)."""
    from cadence.policies.search import SearchSettings
    from cadence.policies.value_verifier import resolve_verifier

    if search_cfg.candidates <= 1:
        policy.search = None
        return
    verifier = resolve_verifier(str(search_cfg.verifier), search_cfg.value, checkpoint_dir, eval_seeds)
    if callable(getattr(verifier, "check_fits", None)):
        verifier.check_fits(policy)
    policy.search = SearchSettings(int(search_cfg.candidates), str(search_cfg.method), verifier,
                                   int(search_cfg.rounds), float(search_cfg.radius), float(search_cfg.get("trust", 1.0)),
                                   int(search_cfg.get("lookahead_chunks", 0)))


def measure_latency(policy, obs: dict[str, torch.Tensor], calls: int, warmup: int = 3) -> dict:
    """Milliseconds per ``predict_chunk`` call at batch size 1 (median and 90th percentile). With
    the oracle verifier, the network's share only: its simulated lookahead scores nothing here."""
    from cadence.policies.search import zero_lookahead

    extra = {"lookahead": zero_lookahead} if getattr(policy, "uses_lookahead", False) else {}
    times = np.sort(time_calls(lambda i: policy.predict_chunk(obs, **extra), calls, warmup))
    return {"ms_per_chunk": round(float(np.median(times)), 3),
            "ms_per_chunk_p90": round(float(times[min(len(times) - 1, int(0.9 * len(times)))]), 3)}


def first_observation(task_cfg, obs_horizon: int, seed: int, device) -> dict[str, torch.Tensor]:
    task_cfg = member_tasks(task_cfg)[0]
    env = make_env(task_cfg)
    try:
        obs, _ = env.reset(seed=seed)
    finally:
        env.close()
    return {k: torch.as_tensor(obs[k], device=device)[None, None].expand(1, obs_horizon, *obs[k].shape)
            for k in task_cfg.obs_keys}


def evaluate_policy(policy, task_cfg, policy_cfg, eval_cfg, out_dir: Path | None, device,
                    progress: bool = True, title: str = "", ranks: distributed.Ranks | None = None,
                    pools: EnvPools | None = None) -> tuple[dict | None, RolloutResult | None]:
    """Roll out ``eval_cfg.episodes`` seeded episodes; write eval.json, video and plot to ``out_dir``.
    A multitask suite runs every member on the same seeds (``out_dir/<member>``); its summary
    holds each member's (``per_task``) and their means (the rollout result is None). Under
    torchrun every rank calls this with its ``ranks``; rank 0 gets the results and writes them,
    the other ranks get ``(None, None)``. ``pools``: keep ``eval.async_envs`` workers there for
    the next evaluation (the caller closes it) instead of closing them."""
    ranks = ranks or distributed.SINGLE
    if not ranks.main:
        out_dir = None
    if not is_suite(task_cfg):
        return _evaluate_task(policy, task_cfg, policy_cfg, eval_cfg, out_dir, device, progress, title, ranks, pools)
    per_task = {}
    for member in member_tasks(task_cfg):
        per_task[member.name], _ = _evaluate_task(policy, member, policy_cfg, eval_cfg,
                                                  None if out_dir is None else out_dir / member.name, device,
                                                  progress, f"{title} ({member.name})", ranks, pools)
    if not ranks.main:
        return None, None
    summaries = list(per_task.values())
    mean = lambda key: float(np.mean([m[key] for m in summaries]))  # noqa: E731
    summary = {"success_rate": mean("success_rate"), "n_episodes": sum(m["n_episodes"] for m in summaries),
               "mean_length": mean("mean_length"), "mean_max_reward": mean("mean_max_reward"),
               "sample_steps": summaries[0]["sample_steps"], "per_task": per_task,
               **{f"success_rate/{name}": m["success_rate"] for name, m in per_task.items()}}
    if "ms_per_chunk" in summaries[0]:
        summary["ms_per_chunk"] = summaries[0]["ms_per_chunk"]
    if out_dir is not None:
        (out_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary, None


def evaluation_waves(seeds: list[int], batch_size: int, world: int = 1) -> list[list[int]]:
    """``seeds`` in waves of ``batch_size`` episodes run together; 0: one wave per rank (all at once alone)."""
    if batch_size < 0:
        raise ValueError(f"eval.batch_size must be >= 0 (0: all episodes at once), got {batch_size}")
    size = batch_size or max(1, math.ceil(len(seeds) / world))
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def wave_seed(seed: int, wave: int) -> int:
    """The sampling-noise seed of wave ``wave`` (wave 0: ``seed`` itself, as one wave always had)."""
    return seed + wave * 1_000_003


def _evaluate_task(policy, task_cfg, policy_cfg, eval_cfg, out_dir: Path | None, device, progress: bool,
                   title: str, ranks: distributed.Ranks,
                   pools: EnvPools | None) -> tuple[dict | None, RolloutResult | None]:
    policy.eval()
    seeds = [eval_cfg.seed + i for i in range(eval_cfg.episodes)]
    if not seeds:
        raise ValueError(f"eval.episodes must be >= 1 to evaluate, got {eval_cfg.episodes}")
    video = eval_cfg.video_episodes if out_dir is not None else 0
    if video:
        check_video_format(eval_cfg.video_format)
    problem = rendering_problem() if video else None
    if problem:
        log.warning("no rollout video: %s", problem)
        video = 0
    waves = evaluation_waves(seeds, eval_cfg.batch_size, ranks.world)
    started = time.perf_counter()
    mine, my_waves = [], range(ranks.rank, len(waves), ranks.world)
    # Worker processes start once and run every wave of this rank (the last, shorter one with spare
    # envs); with `pools`, once for every evaluation of the run.
    own_pools, key = pools is None, (task_cfg.name, task_cfg.env_id, len(waves[0]), video)
    pools = EnvPools() if own_pools else pools
    envs = None
    if eval_cfg.async_envs and my_waves:
        def start_workers():
            check_worker_memory(task_cfg, len(waves[0]), f"eval.async_envs with eval.batch_size={eval_cfg.batch_size}")
            return vector_env(partial(make_env, task_cfg, video > 0), len(waves[0]), n_video=video, async_envs=True,
                              preload=[m for m in [env_module(task_cfg)] if m])
        envs = pools.get(key, start_workers)
    try:
        for k in my_waves:
            filmed = video if k == 0 else 0            # the video shows the first episodes (rank 0's first wave)
            with torch.random.fork_rng(devices=[]):   # sampling noise seeded too: reruns are identical
                torch.manual_seed(wave_seed(eval_cfg.seed, k))
                mine.append((k, rollout(policy, partial(make_env, task_cfg, filmed > 0), waves[k],
                                        policy_cfg.obs_horizon, policy_cfg.exec_horizon, list(task_cfg.obs_keys),
                                        device=device, video_episodes=filmed, progress=progress,
                                        info_metrics=list(task_cfg.get("info_metrics") or []), envs=envs)))
    except BaseException:
        pools.drop(key)                            # a worker may have died: the next evaluation starts afresh
        raise
    finally:
        if own_pools:
            pools.close()
    parts = distributed.gather_to_main(mine, ranks)
    if not ranks.main:
        return None, None
    seconds = time.perf_counter() - started      # wall time of all waves, in eval.json only (summaries stay comparable)
    result = RolloutResult.concat([r for _, r in sorted(parts, key=lambda kr: kr[0])])
    summary = result.summary()
    summary.update(batch_size=len(waves[0]), waves=len(waves))
    if eval_cfg.latency_calls > 0:
        summary.update(measure_latency(policy, first_observation(task_cfg, policy_cfg.obs_horizon, seeds[0], device),
                                       eval_cfg.latency_calls))
    summary["sample_steps"] = policy.process.sample_steps
    search = getattr(policy, "search", None)
    if search is not None:
        summary["search"] = {"candidates": search.candidates, "method": search.method, "rounds": search.rounds,
                             "verifier": search.verifier if isinstance(search.verifier, str)
                             else getattr(search.verifier, "name", "custom"),
                             "radius": search.radius, "trust": search.trust, "lookahead_chunks": search.lookahead_chunks}
    cache = getattr(policy.denoiser, "branch_cache", None)
    if cache is not None and getattr(cache, "active", None) is not None:
        summary["block_cache"] = {"method": cache.active.method, "updates": cache.active.budget,
                                  "branch_evaluations": cache.active.branch_evaluations()}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if video > 0:
            summary["video"] = str(save_video(result.frames, out_dir / f"rollouts.{eval_cfg.video_format}",
                                              fps=task_cfg.fps))
        if eval_cfg.plot and task_cfg.env_id == DEFAULT_TASK_ID:   # the picture is of that task
            summary["plot"] = str(plot_trajectories(result, out_dir / "trajectories.png", title=title))
        (out_dir / "eval.json").write_text(json.dumps({**summary, "rollout_seconds": round(seconds, 3),
                                                         "episodes": result.episodes()}, indent=2))
    return summary, result


def format_summary(summary: dict) -> str:
    if "per_task" in summary:
        return "; ".join(f"{name}: success {m['success_rate']:.2f}" for name, m in summary["per_task"].items()) + \
            f"; mean success {summary['success_rate']:.2f}"
    shares = ", ".join(f"{m} {s:.2f}" for m, s in sorted(summary.get("mode_shares", {}).items())) or "-"
    latency = f", {summary['ms_per_chunk']:.1f} ms/chunk" if "ms_per_chunk" in summary else ""
    finals = "".join(f", mean final {k[len('mean_final_'):]} {v:.3f}" for k, v in sorted(summary.items())
                     if k.startswith("mean_final_"))
    return (f"success {summary['success_rate']:.2f} over {summary['n_episodes']} episodes "
            f"(modes among successes: {shares}), mean length {summary['mean_length']:.1f}, "
            f"mean max reward {summary.get('mean_max_reward', 0.0):.3f}{finals}{latency}")
