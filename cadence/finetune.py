"""``cadence finetune``: online RL fine-tuning of a pretrained policy with PPO, in its task's simulator.

Flow and shortcut policies are fine-tuned with ReinFlow (:mod:`cadence.policies.rl.reinflow`), DDPM
policies with the DPPO-style baseline (:mod:`cadence.policies.rl.dppo`). Each iteration rolls
``envs`` environments ``rollout_steps`` decisions forward (one chunk of ``exec_horizon`` actions
each, sparse success reward, :class:`~cadence.envs.chunk_env.ChunkVectorEnv`), then runs PPO epochs
on the batch. The deterministic policy is evaluated before fine-tuning, every ``eval_every``
iterations and at the end; ``curve.json`` / ``curve.png`` hold success against environment steps
and wall time (evaluations excluded).

The run folder's ``checkpoint/`` is an ordinary policy checkpoint (``cadence eval``, ``export``
and ``run`` take it; its config samples with the fine-tuned number of steps) plus the
fine-tuning state (noise network, critic, optimizers, counters) for ``resume=true``, which
continues from the last saved iteration with fresh episodes.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from tqdm import tqdm

from cadence.checkpoint import CheckpointError, load_policy, resolve_checkpoint_dir, save_checkpoint
from cadence.device import resolve_device
from cadence.envs.chunk_env import ChunkVectorEnv
from cadence.envs.env_pools import EnvPools
from cadence.envs.task_env import make_env
from cadence.sim_eval import evaluate_policy, format_summary, set_sample_steps
from cadence.learning_curve import plot_learning_curves
from cadence.policies.rl.critic import Critic
from cadence.policies.rl.dppo import DPPOActor
from cadence.policies.rl.exploration_noise import ExplorationNoise
from cadence.policies.rl.ppo import clipped_surrogate, gae, normalize
from cadence.policies.rl.reinflow import ReinFlowActor
from cadence.task_suite import is_suite
from cadence.tracking import MetricsLogger
from cadence.train_state import optimizer_state, restore_optimizer, step_generator

log = logging.getLogger(__name__)


def method_of(policy) -> str:
    """The RL fine-tuning the policy's process declares (``finetune_method``)."""
    method = policy.process.finetune_method
    if method in ("reinflow", "dppo"):
        return method
    raise CheckpointError(f"cadence finetune takes flow or shortcut policies (ReinFlow) and DDPM policies (DPPO), "
                          f"not {type(policy.process).__name__}")


def build_actor(policy, fcfg):
    if method_of(policy) == "dppo":
        d = fcfg.dppo
        return DPPOActor(policy, d.ft_steps, d.min_std, d.eta)
    n = fcfg.noise
    noise = ExplorationNoise(policy.encoder.out_dim, policy.pred_horizon * policy.action_dim, n.sigma_min,
                             n.sigma_max, n.schedule, n.hidden, hold=n.hold, floor=n.floor)
    return ReinFlowActor(policy, noise.to(next(policy.parameters()).device), fcfg.logprob_reduce)


@dataclass
class Batch:
    obs: dict            # {key: (B, To, ...)} tensors
    chain: torch.Tensor
    log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def take(self, idx: torch.Tensor) -> "Batch":
        return Batch({k: v[idx] for k, v in self.obs.items()}, self.chain[idx], self.log_prob[idx],
                     self.advantages[idx], self.returns[idx])


def _tensors(obs: dict, device) -> dict:
    return {k: torch.as_tensor(v, device=device) if v.dtype == np.uint8 else
            torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in obs.items()}


class Finetuner:
    """The fine-tuning state and its loop; :func:`finetune` runs it from a config."""

    def __init__(self, cfg: DictConfig, run_dir: Path, progress: bool = True):
        self.cfg, self.fcfg, self.run_dir, self.progress = cfg, cfg.finetune, Path(run_dir), progress
        self.eval_pools = EnvPools()             # eval.async_envs workers, kept between evaluations; run() closes
        f = self.fcfg
        if f.threads > 0:
            torch.set_num_threads(f.threads)
        self.device = resolve_device(f.device)
        self.source = resolve_checkpoint_dir(cfg.checkpoint)
        policy, self.train_cfg, self.meta = load_policy(self.source, self.device, block_cache=False)
        if is_suite(self.train_cfg.task):
            raise CheckpointError(f"{self.source}: cadence finetune takes a single task, not the suite "
                                  f"{self.train_cfg.task.name!r}")
        set_sample_steps(policy, f.sample_steps)
        self.train_cfg.policy.sample_steps = policy.process.sample_steps
        self.policy, self.method = policy, method_of(policy)
        self.policy_exec = self.train_cfg.policy.exec_horizon
        self.actor = build_actor(policy, f)
        shapes = {k: tuple(v) for k, v in self.meta["obs_shapes"].items()}
        self.critic = Critic(shapes, policy.obs_horizon, policy.normalizer).to(self.device)
        self.actor_opt = torch.optim.Adam([p for p in self.actor.parameters() if p.requires_grad], lr=f.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=f.critic_lr)
        self.pretrained = None
        if f.w2_weight > 0:
            if self.method != "reinflow":
                raise ValueError("finetune.w2_weight is ReinFlow's regulariser; set it to 0 for DDPM policies")
            self.pretrained = build_actor(load_policy(self.source, self.device, block_cache=False)[0], f)
            set_sample_steps(self.pretrained.policy, policy.process.sample_steps)
            self.pretrained.requires_grad_(False)
        dppo = f.dppo
        self.step_weights = None if self.method == "reinflow" else torch.tensor(
            [dppo.gamma_denoise ** (self.actor.ft_steps - 1 - j) for j in range(self.actor.ft_steps)], device=self.device)
        self.iteration, self.env_steps, self.seconds, self.next_seed = 0, 0, 0.0, f.seed * 1_000_003
        self.curve: list[dict] = []
        self.episodes = {"count": 0, "success": 0}

    # --- state ------------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    def save(self) -> None:
        tensors = {f"critic.{k}": v for k, v in self.critic.state_dict().items()}
        if self.method == "reinflow":
            tensors.update({f"noise.{k}": v for k, v in self.actor.noise.state_dict().items()})
        steps = {}
        for name, opt in (("actor", self.actor_opt), ("critic", self.critic_opt)):
            moments, counts = optimizer_state(opt)
            tensors.update({f"{name}_opt.{k}": v for k, v in moments.items()})
            steps[name] = counts
        state = {"iteration": self.iteration, "env_steps": self.env_steps, "seconds": self.seconds,
                 "next_seed": self.next_seed, "curve": self.curve, "episodes": self.episodes,
                 "optimizer_steps": steps, "source": str(self.source)}
        info = {"method": self.method, "source": str(self.source), "iterations": self.iteration,
                "env_steps": self.env_steps, "pretrain_step": self.meta["step"]}
        save_checkpoint(self.ckpt_dir, self.policy, self.train_cfg, self.meta["step"], self.meta["obs_shapes"],
                        tensors, state, extra_meta={"finetune": info})

    def restore(self) -> bool:
        found = next((self.run_dir / n for n in ("checkpoint", "checkpoint.old")
                      if (self.run_dir / n / "train_state.json").is_file()), None)
        if found is None:
            return False
        weights = load_file(str(found / "model.safetensors"), device=str(self.device))
        self.policy.load_state_dict(weights, strict=False)
        tensors = load_file(str(found / "train_state.safetensors"), device=str(self.device))
        state = json.loads((found / "train_state.json").read_text())
        part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        self.critic.load_state_dict(part("critic."))
        if self.method == "reinflow":
            self.actor.noise.load_state_dict(part("noise."))
        for name, opt in (("actor", self.actor_opt), ("critic", self.critic_opt)):
            restore_optimizer(opt, part(f"{name}_opt."), state["optimizer_steps"][name])
        self.iteration, self.env_steps, self.seconds = state["iteration"], state["env_steps"], state["seconds"]
        self.next_seed, self.curve, self.episodes = state["next_seed"], state["curve"], state["episodes"]
        log.info("resumed %s at iteration %d (%d environment steps)", self.run_dir, self.iteration, self.env_steps)
        return True

    # --- evaluation -------------------------------------------------------------------------------
    def evaluate(self, metrics: MetricsLogger) -> dict:
        summary, _ = evaluate_policy(self.policy, self.train_cfg.task, self.train_cfg.policy, self.cfg.eval,
                                     self.run_dir / f"eval-iter{self.iteration}", self.device, progress=False,
                                     title=f"{self.method} @ iteration {self.iteration}", pools=self.eval_pools)
        row = {"iteration": self.iteration, "env_steps": self.env_steps, "wall_s": round(self.seconds, 2),
               "success_rate": summary["success_rate"], "mean_length": summary["mean_length"]}
        self.curve = [r for r in self.curve if r["iteration"] != self.iteration] + [row]
        metrics.log_evaluation({**summary, "env_steps": self.env_steps, "wall_s": row["wall_s"]}, self.iteration)
        log.info("iteration %d (%d env steps, %.0f s): %s", self.iteration, self.env_steps, self.seconds,
                 format_summary(summary))
        (self.run_dir / "curve.json").write_text(json.dumps(self.curve, indent=2))
        plot_learning_curves({self.method: self.curve}, self.run_dir / "curve.png",
                             title=f"{self.train_cfg.task.name}: {self.method} fine-tuning")
        return row

    # --- one iteration ------------------------------------------------------------------------------
    def collect(self, venv: ChunkVectorEnv, obs: dict, gen: torch.Generator, progress: float):
        f, T = self.fcfg, self.fcfg.rollout_steps
        rows = {"obs": [], "chain": [], "log_prob": [], "reward": [], "terminated": [], "ended": [], "value": [],
                "next_value": []}
        self.actor.eval()
        with torch.no_grad():
            for _ in range(T):
                o = _tensors(obs, self.device)
                sample = self.actor.explore(o, gen, progress)
                step = venv.step(sample.chunk.executable(self.policy_exec).cpu().numpy())
                next_obs = _tensors(step.obs, self.device)
                next_value = self.critic(next_obs)
                if step.truncated.any():
                    cut = torch.as_tensor(step.truncated, device=self.device)
                    next_value = torch.where(cut, self.critic(_tensors(step.final_obs, self.device)), next_value)
                for key, value in (("obs", o), ("chain", sample.chain), ("log_prob", sample.log_prob),
                                   ("value", self.critic(o)), ("next_value", next_value),
                                   ("reward", torch.as_tensor(step.reward, dtype=torch.float32, device=self.device)),
                                   ("terminated", torch.as_tensor(step.terminated, device=self.device)),
                                   ("ended", torch.as_tensor(step.terminated | step.truncated, device=self.device))):
                    rows[key].append(value)
                self.env_steps += step.env_steps
                self.episodes["count"] += len(step.finished)
                self.episodes["success"] += sum(step.finished)
                obs = step.obs
        stack = {k: torch.stack(v) for k, v in rows.items() if k != "obs"}
        adv, ret = gae(stack["reward"], stack["value"], stack["next_value"], stack["terminated"], stack["ended"],
                       f.gamma, f.lam)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        batch = Batch({k: flat(torch.stack([r[k] for r in rows["obs"]])) for k in rows["obs"][0]},
                      flat(stack["chain"]), flat(stack["log_prob"]), flat(adv), flat(ret))
        return obs, batch, {"reward_mean": float(stack["reward"].mean())}

    def update(self, batch: Batch, gen: torch.Generator, progress: float) -> dict:
        f = self.fcfg
        n = batch.returns.shape[0]
        train_actor = self.iteration >= f.critic_warmup
        self.actor.train()
        logs: dict[str, list] = {}
        first = True
        for _ in range(f.epochs):
            order = torch.randperm(n, generator=gen, device=self.device)
            for start in range(0, n, f.minibatch):
                mb = batch.take(order[start: start + f.minibatch])
                value_loss = 0.5 * (self.critic(mb.obs) - mb.returns).pow(2).mean()
                self.critic_opt.zero_grad(set_to_none=True)
                value_loss.backward()
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), f.grad_clip)
                self.critic_opt.step()
                record = {"value_loss": value_loss.item()}
                if train_actor:
                    log_prob, entropy = self.actor.log_prob(mb.obs, mb.chain, progress)
                    pg_loss, stats = clipped_surrogate(log_prob, mb.log_prob, normalize(mb.advantages), f.clip,
                                                       self.step_weights)
                    if first and stats["ratio_max_dev"] > f.ratio_tolerance:
                        raise RuntimeError(f"PPO ratio on the first minibatch is off 1 by {stats['ratio_max_dev']:.2e} "
                                           f"(> finetune.ratio_tolerance {f.ratio_tolerance}): the chain is rescored "
                                           f"differently from how it was sampled")
                    first = False
                    loss = pg_loss - f.entropy * entropy.mean()
                    if self.pretrained is not None:
                        start_noise = torch.randn(mb.chain[:, 0].shape, generator=gen, device=self.device)
                        with torch.no_grad():
                            target = self.pretrained.ode(mb.obs, start_noise)
                        w2 = (self.actor.ode(mb.obs, start_noise) - target).pow(2).mean()
                        loss = loss + f.w2_weight * w2
                        stats["w2"] = w2.item()
                    self.actor_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.actor.parameters(), f.grad_clip)
                    self.actor_opt.step()
                    record.update(stats, pg_loss=pg_loss.item(), entropy=entropy.mean().item())
                for k, v in record.items():
                    logs.setdefault(k, []).append(v)
        out = {k: float(np.max(v) if k == "ratio_max_dev" else np.mean(v)) for k, v in logs.items()}
        out.update(log_prob_min=float(batch.log_prob.min()), log_prob_max=float(batch.log_prob.max()))
        if self.method == "reinflow" and batch.obs:
            with torch.no_grad():
                cond = self.policy.encoder({k: v[:256] for k, v in batch.obs.items()}, self.policy.normalizer)
                out["sigma_mean"] = float(self.actor.noise(cond, 0.0, progress).mean())
        return out

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> Path:
        f, cfg = self.fcfg, self.cfg
        resumed = cfg.resume and self.restore()
        metrics = MetricsLogger(self.run_dir, cfg.tracking.mode, cfg.tracking.project,
                                OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), name=self.run_dir.name)
        log.info("%s fine-tuning of %s (%s, %d denoising steps): %d envs x %d decisions x %d actions per iteration, "
                 "budget %d environment steps", self.method, self.source, self.train_cfg.policy.name,
                 self.policy.process.sample_steps, f.envs, f.rollout_steps, self.policy_exec, f.env_steps)
        venv = bar = None
        try:
            if not resumed:
                self.evaluate(metrics)
            venv = ChunkVectorEnv(lambda: make_env(self.train_cfg.task), f.envs, self.policy.obs_horizon,
                                  self.policy_exec, list(self.train_cfg.task.obs_keys), seed=self.next_seed)
            bar = tqdm(total=f.env_steps, initial=min(self.env_steps, f.env_steps), unit="step",
                       desc=f"finetune {self.method}", disable=not self.progress, dynamic_ncols=True)
            obs = venv.reset()
            while self.env_steps < f.env_steps:
                started, before = time.perf_counter(), self.env_steps
                progress = self.env_steps / f.env_steps
                gen = step_generator(f.seed, self.iteration, self.device)
                obs, batch, rollout_stats = self.collect(venv, obs, gen, progress)
                stats = self.update(batch, gen, progress)
                self.iteration += 1
                self.next_seed = venv.next_seed
                self.seconds += time.perf_counter() - started
                stats.update(rollout_stats, env_steps=self.env_steps, wall_s=round(self.seconds, 2),
                             train_success=self.episodes["success"] / max(1, self.episodes["count"]))
                metrics.log(stats, self.iteration)
                bar.update(self.env_steps - before)
                bar.set_postfix(it=self.iteration, reward=f"{rollout_stats['reward_mean']:.3f}")
                done = self.env_steps >= f.env_steps
                if done or (f.eval_every and self.iteration % f.eval_every == 0):
                    self.evaluate(metrics)
                if done or (f.checkpoint_every and self.iteration % f.checkpoint_every == 0):
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            if venv is not None:
                venv.close()
            self.eval_pools.close()
            metrics.close()
        return self.ckpt_dir


def finetune(cfg: DictConfig, run_dir: Path, progress: bool = True) -> Path:
    """Fine-tune per ``cfg`` (a FinetuneApp config) in ``run_dir``; returns its checkpoint folder."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoint" / "model.safetensors").exists() and not cfg.resume:
        raise CheckpointError(f"{run_dir} already holds a fine-tuned checkpoint: pass resume=true to continue it, "
                              f"or choose another run_dir")
    return Finetuner(cfg, run_dir, progress).run()


def run(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    ckpt = finetune(cfg, Path(HydraConfig.get().runtime.output_dir))
    print(f"checkpoint: {ckpt}")
    curve = json.loads((ckpt.parent / "curve.json").read_text())
    print("success: " + " -> ".join(f"{r['success_rate']:.2f}" for r in curve) + f" (curve: {ckpt.parent / 'curve.png'})")
    return ckpt
