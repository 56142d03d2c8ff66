"""``cadence bench loop checkpoint=RUN``: the real-time loop over the network vs offline evaluation.

One run, same checkpoint, same episode seeds:

1. a ``cadence robot serve`` process (the task in real time, loopback, a fresh token);
2. ``cadence run`` driving it with ``robot=remote`` at the task's rate, with the
   injected inference delay, after budget selection;
3. offline evaluation (lockstep simulation, no delays) with the sampling steps the budget chose.

Writes ``loop.json`` and prints success for both plus the per-tick timing summary.
"""
from __future__ import annotations

import json
import secrets
import signal
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cadence.checkpoint import load_policy, resolve_checkpoint_dir
from cadence.config import EvalConfig
from cadence.robot_schema import RunApp
from cadence.sim_eval import evaluate_policy, set_sample_steps
from cadence.run import run as run_loop
from cadence.bench.served_robot import start_server, stop_server


def run(cfg: DictConfig) -> dict:
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    policy, train_cfg, _ = load_policy(ckpt)
    token = secrets.token_hex(16)
    server, endpoint = start_server(train_cfg.task.name, token, cfg.episodes * 60 + 600, out / "server.log")
    try:
        run_cfg = OmegaConf.merge(OmegaConf.structured(RunApp), {
            "checkpoint": str(ckpt), "out_dir": str(out / "loop"), "budget": cfg.budget,
            "robot": {"driver": "remote", "endpoint": endpoint, "token": token},
            "control": {"episodes": cfg.episodes, "seed": cfg.seed, "blend": cfg.blend,
                        "inject_delay_ms": list(cfg.inject_delay_ms)}})
        loop = run_loop(run_cfg)
    finally:
        stop_server(server, signal.SIGINT, out / "server.log")
    steps = json.loads((out / "loop" / "budget.json").read_text())["chosen"]["sample_steps"]
    set_sample_steps(policy, steps)
    offline, _ = evaluate_policy(policy, train_cfg.task, train_cfg.policy,
                                 OmegaConf.structured(EvalConfig(episodes=cfg.episodes, seed=cfg.seed,
                                                                 video_episodes=0, plot=False, latency_calls=0)),
                                 None, "cpu")
    timing = loop["timing"]
    report = {"checkpoint": str(ckpt), "episodes": cfg.episodes, "seeds": [cfg.seed, cfg.seed + cfg.episodes - 1],
              "chosen": loop["chosen"], "inject_delay_ms": list(cfg.inject_delay_ms), "blend": cfg.blend,
              "closed_loop_success": loop["success_rate"], "offline_success": offline["success_rate"],
              "offline_mode_counts": offline["mode_counts"], "timing": timing,
              "server": (out / "server.log").read_text().strip().splitlines()[-1:]}
    (out / "loop.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'':<34}{'success':>8}\n{'offline (lockstep, no delay)':<34}{offline['success_rate']:8.2f}\n"
          f"{'closed loop over ZeroMQ, ' + loop['chosen']:<34}{loop['success_rate']:8.2f}")
    print(f"ticks {timing['ticks']}, jitter p99 {timing['jitter_ms']['p99']:.2f} ms, deadline misses "
          f"{timing['deadline_misses']}, late sends {timing['late_sends']}, inference p99 "
          f"{timing['inference_ms']['p99']:.1f} ms -> {out / 'loop.json'}")
    return report
