"""Training: AdamW, warm-up + cosine learning rate, EMA weights, periodic evaluation, resume.

Every step draws its batch and its noise from a generator seeded by (seed, step), and the
learning rate is a function of the step, so a run resumed from a checkpoint continues
exactly as if it had never stopped.

Under ``torchrun --nproc_per_node=N`` (see :mod:`cadence.distributed`) ``train.batch_size`` stays
the global batch: every rank draws the same global sample indices and takes its own slice
(``batch_size / N`` each), with its own noise; DistributedDataParallel averages the gradients,
so the weights follow the same path as one process with that batch. Rank 0 logs, evaluates and
checkpoints; the logged loss is the mean over ranks.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tqdm import tqdm

from cadence import distributed
from cadence.checkpoint import CheckpointError, load_config, load_weights, save_checkpoint
from cadence.checkpoint_checks import read_meta
from cadence.choices import Precision
from cadence.ema import EMA
from cadence.envs.env_pools import EnvPools
from cadence.sim_eval import evaluate_policy, format_summary
from cadence.lr_schedule import warmup_cosine
from cadence.offline_eval import format_offline, offline_validate, write_offline
from cadence.policies.factory import build_policy
from cadence.store_task import check_simulator, resolve_task
from cadence.tracking import MetricsLogger
from cadence.train_state import optimizer_state, restore_optimizer, step_generator
from cadence.training_data import fit_normalizer, held_out_episodes, load_windows
from cadence.untrusted import load_safetensors

log = logging.getLogger(__name__)


def fit_process(policy, data, seed: int) -> None:
    """A process with parameters fitted to the data (truncated anchor diffusion's K-means anchors)
    fits them on the normalised training chunks of each task."""
    if not policy.process.fits_data:
        return
    started = time.perf_counter()
    chunks = [policy.normalizer.normalize(data.action_key, c.float()) for c in data.action_chunks_by_task()]
    done = policy.process.fit_data(chunks, seed=seed)
    log.info("%s training chunks (%.1f s)", done, time.perf_counter() - started)


def train(cfg: DictConfig, run_dir: Path, progress: bool = True) -> Path:
    """Train per ``cfg`` (a TrainApp config) in ``run_dir``; returns the checkpoint folder. Under
    ``torchrun`` every process calls this: the ranks share rank 0's ``run_dir`` and the global batch."""
    ranks = distributed.setup(cfg.train.device)
    try:
        with EnvPools() as pools:              # eval.async_envs workers live for the whole run
            return _train(cfg, Path(distributed.broadcast_text(str(run_dir), ranks)), progress, ranks, pools)
    finally:
        distributed.teardown(ranks)


class _Loss(nn.Module):
    """``policy.compute_loss`` as a forward pass, so DistributedDataParallel can average its gradients."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, batch, generator):
        return self.policy.compute_loss(batch, generator=generator)


def _train(cfg: DictConfig, run_dir: Path, progress: bool, ranks: distributed.Ranks, pools: EnvPools) -> Path:
    tcfg, pcfg = cfg.train, cfg.policy
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    if tcfg.batch_size % ranks.world:
        raise ValueError(f"train.batch_size ({tcfg.batch_size}) is the global batch: it must be divisible by the "
                         f"number of processes ({ranks.world})")
    per_rank = tcfg.batch_size // ranks.world
    device = ranks.device
    if tcfg.precision not in Precision.__members__:
        raise ValueError(f"train.precision must be one of {list(Precision.__members__)}, got {tcfg.precision!r}")
    ckpt_dir = run_dir / "checkpoint"
    existing = next((run_dir / n for n in ("checkpoint", "checkpoint.old")
                     if (run_dir / n / "model.safetensors").exists()), None)
    if existing and not cfg.resume:
        raise CheckpointError(f"{run_dir} already holds a checkpoint: pass resume=true to continue it, "
                              f"or choose another run_dir")

    if cfg.resume and existing:
        cfg = _with_checkpoint_model(cfg, existing)
        tcfg, pcfg = cfg.train, cfg.policy
    cfg.task = resolve_task(cfg.task)
    resumed = read_meta(existing / "meta.json")["val_episodes"] if cfg.resume and existing else None
    train_episodes, val_episodes = held_out_episodes(cfg, resumed)
    cfg.train.val_episodes = len(val_episodes)
    data = load_windows(cfg.task, pcfg.obs_horizon, pcfg.pred_horizon, episodes=train_episodes)
    rollouts = cfg.task.env_id is not None and cfg.eval.episodes > 0
    if rollouts and ranks.main:
        check_simulator(cfg.task, data.obs_shapes, data.action_dim)
    normalizer = fit_normalizer(data, pcfg.normalizer)
    torch.manual_seed(tcfg.seed)   # weight initialisation
    policy = build_policy(pcfg, data.obs_shapes, data.action_dim, normalizer, cfg.task.action_key).to(device)
    if not (cfg.resume and existing):            # a resumed run has its anchors in the checkpoint
        fit_process(policy, data, tcfg.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ema = EMA(policy, max_decay=tcfg.ema_decay)
    start = 0
    if cfg.resume and existing:
        start = _resume(existing, policy, ema, optimizer, device)
        log.info("resumed %s at step %d", run_dir, start)
    elif cfg.resume:
        log.info("resume=true but %s holds no checkpoint yet: starting from step 0", run_dir)
    loss_of = _Loss(policy)
    if ranks.distributed:      # rank 0's weights and buffers go to every rank here; gradients are averaged
        loss_of = DistributedDataParallel(loss_of, device_ids=[device] if device.type == "cuda" else None,
                                          find_unused_parameters=pcfg.network == "transformer"
                                          and pcfg.transformer.num_experts > 0)

    n_params = sum(p.numel() for p in policy.parameters())
    if ranks.main:
        log.info("%s policy, %.2fM parameters, %d training windows from %d episodes, device %s",
                 pcfg.name, n_params / 1e6, len(data), data.n_episodes, device)
        log.info("batch %d per step = %d process%s x %d", tcfg.batch_size, ranks.world,
                 "es" if ranks.distributed else "", per_rank)
    metrics = MetricsLogger(run_dir, cfg.tracking.mode, cfg.tracking.project,
                            OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), name=run_dir.name) if ranks.main else None

    # Training wall time, periodic evaluations excluded, carried across resumes (meta.json).
    clock = {"start": time.perf_counter(), "eval": 0.0, "before": _previous_train_seconds(existing, cfg.resume)}

    def checkpoint(step: int, extra: dict | None = None) -> None:
        if not ranks.main:
            return
        tensors, steps = optimizer_state(optimizer)
        tensors.update({f"model.{k}": v for k, v in policy.weights().items()})
        seconds = clock["before"] + time.perf_counter() - clock["start"] - clock["eval"]
        save_checkpoint(ckpt_dir, ema.model, cfg, step, data.obs_shapes, tensors, {"optimizer_steps": steps},
                        extra_meta={"train_seconds": round(seconds, 1), "world_size": ranks.world,
                                    "val_episodes": val_episodes, **(extra or {})})

    def evaluate(step: int) -> None:             # every rank rolls out its share; rank 0 gathers and logs
        started = time.perf_counter()
        out = run_dir / f"eval-step{step}"
        if rollouts:
            summary, _ = evaluate_policy(ema.model, cfg.task, pcfg, cfg.eval, out, device, progress=False,
                                         title=f"{pcfg.name} @ step {step}", ranks=ranks, pools=pools)
            if ranks.main:
                metrics.log_evaluation(summary, step)
                log.info("step %d: %s", step, format_summary(summary))
        if val_episodes and ranks.main:
            offline = offline_validate(ema.model, data, val_episodes, pcfg.exec_horizon, cfg.eval.offline_samples,
                                       cfg.eval.seed, device, out, cfg.eval.offline_plot_episodes,
                                       title=f"{pcfg.name} @ step {step}")
            write_offline(offline, out)
            metrics.log_offline(offline, step)
            log.info("step %d: %s", step, format_offline(offline))
        clock["eval"] += time.perf_counter() - started

    bar = tqdm(total=tcfg.steps, initial=start, desc=f"train {pcfg.name}", disable=not (progress and ranks.main),
               dynamic_ncols=True)
    window_loss, window_start = 0.0, time.perf_counter()
    policy.train()
    for step in range(start, tcfg.steps):
        lr = tcfg.lr * warmup_cosine(step, tcfg.steps, tcfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = step_generator(tcfg.seed, step, device)
        samples = torch.randint(0, len(data), (tcfg.batch_size,), generator=gen, device=device)
        if ranks.distributed:      # this rank's share of the global batch, and its own noise
            samples = samples[ranks.rank * per_rank:(ranks.rank + 1) * per_rank]
            if ranks.rank:
                gen = step_generator(tcfg.seed, step, device, stream=ranks.rank)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.precision == "bf16"):
            loss = loss_of(data.batch(samples, device), gen).float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), tcfg.grad_clip)
        optimizer.step()
        ema.update(policy, step)
        window_loss += loss.item()
        done = step + 1
        bar.update(1)
        if done % tcfg.log_every == 0 or done == tcfg.steps:
            n = (done - start) % tcfg.log_every or tcfg.log_every
            mean_loss = _mean_over_ranks(window_loss / n, ranks, device)
            elapsed = time.perf_counter() - window_start
            if ranks.main:
                record = {"loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                          "samples_per_s": n * tcfg.batch_size / max(elapsed, 1e-9)}
                metrics.log(record, done)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.1e}")
            window_loss, window_start = 0.0, time.perf_counter()
        if tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 and done < tcfg.steps:
            checkpoint(done)
        if tcfg.eval_every and (rollouts or val_episodes) and done % tcfg.eval_every == 0 and done < tcfg.steps:
            evaluate(done)
    bar.close()
    spread = distributed.max_weight_difference(policy, ranks)
    if spread > 1e-5:
        log.warning("weights differ across the %d processes by up to %.2e", ranks.world, spread)
    if start < tcfg.steps:          # a resumed run that was already complete has nothing new to save
        checkpoint(tcfg.steps, {"ranks_max_weight_difference": spread} if ranks.distributed else None)
        if rollouts or val_episodes:
            evaluate(tcfg.steps)
    if metrics is not None:
        metrics.close()
    return ckpt_dir


def _mean_over_ranks(value: float, ranks: distributed.Ranks, device) -> float:
    if not ranks.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return float(total) / ranks.world


def _with_checkpoint_model(cfg: DictConfig, ckpt: Path) -> DictConfig:
    """A resumed run keeps the task and policy it was started with, whatever the command line says."""
    saved = load_config(ckpt)
    for group in ("task", "policy"):
        now, then = OmegaConf.to_container(cfg[group], resolve=True), OmegaConf.to_container(saved[group], resolve=True)
        changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        if changed:
            log.warning("resume: keeping the checkpoint's %s settings; ignoring %s", group,
                        ", ".join(f"{group}.{k}={now.get(k)!r} (checkpoint: {then.get(k)!r})" for k in changed))
    return OmegaConf.merge(cfg, {"task": saved.task, "policy": saved.policy})


def _previous_train_seconds(ckpt, resume: bool) -> float:
    if not (resume and ckpt):
        return 0.0
    try:
        return float(json.loads((Path(ckpt) / "meta.json").read_text()).get("train_seconds", 0.0))
    except (OSError, ValueError):
        return 0.0


def _resume(ckpt: Path, policy, ema: EMA, optimizer, device) -> int:
    state_path = ckpt / "train_state.safetensors"
    if not state_path.is_file():
        raise CheckpointError(f"{ckpt}: no train_state.safetensors, cannot resume training from it")
    tensors = load_safetensors(state_path, device)
    load_weights(policy, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, state_path)
    load_weights(ema.model, load_safetensors(ckpt / "model.safetensors", device), ckpt / "model.safetensors")
    normalizer = load_safetensors(ckpt / "normalizer.safetensors", device)
    policy.normalizer.load_state_dict(normalizer)
    ema.model.normalizer.load_state_dict(normalizer)
    steps = json.loads((ckpt / "train_state.json").read_text()).get("optimizer_steps", {})
    restore_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")}, steps)
    return int(json.loads((ckpt / "meta.json").read_text())["step"])


def run(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt = train(cfg, run_dir)
    print(f"checkpoint: {ckpt}")
    return ckpt
