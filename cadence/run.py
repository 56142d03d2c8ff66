"""``cadence run``: drive a robot with a checkpoint at a fixed control rate under a latency budget.

1. Load the checkpoint; connect the robot (``robot=sim`` runs the task in this process,
   ``robot=remote`` talks to ``cadence robot serve``), behind the safety filter.
2. Time every candidate inference configuration (runtime x sampling steps) on calibration
   observations and keep the most accurate one whose p99 fits ``budget.inference_ms``.
3. Run ``control.episodes`` episodes through the control loop; write per-tick timings
   (``ticks.jsonl``), the budget table (``budget.json``) and ``summary.json``.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cadence.checkpoint import load_policy, resolve_checkpoint_dir
from cadence.deploy import budget as budget_mod
from cadence.calibration_data import calibration_observations
from cadence.deploy.control_loop import ControlLoop, LoopConfig
from cadence.deploy.inference_worker import InferenceWorker
from cadence.deploy.runtime_selection import select_runtime
from cadence.deploy.tick_log import TickLog
from cadence.errors import CadenceError
from cadence.policies.value_verifier import VerifierError, resolve_verifier
from cadence.hardware.robot import RobotError
from cadence.hardware.robot_config import safety_limits
from cadence.hardware.robot_factory import make_robot
from cadence.hardware.safety import SafetyFilter
from cadence.stop_signals import StopRequested, stop_signals

log = logging.getLogger(__name__)


def check_compatible(spec, meta: dict, obs_keys, rate_hz: float) -> None:
    if abs(spec.rate_hz - rate_hz) > 1e-6 * rate_hz:
        raise RobotError(f"robot {spec.name!r} steps at {spec.rate_hz:g} Hz but the control loop would run at "
                         f"{rate_hz:g} Hz: actions are stamped on the robot's grid, so set control.rate_hz="
                         f"{spec.rate_hz:g} (or leave it unset)")
    for key in obs_keys:
        if key not in spec.observation:
            raise RobotError(f"robot {spec.name!r} has no observation {key!r} (it has {sorted(spec.observation)})")
        want, got = tuple(meta["obs_shapes"][key]), tuple(spec.observation[key].shape)
        if want != got:
            raise RobotError(f"robot observation {key!r} has shape {got}, the policy was trained on {want}")
    if tuple(spec.action.shape) != (meta["action_dim"],):
        raise RobotError(f"robot action shape {tuple(spec.action.shape)} != the policy's ({meta['action_dim']},)")


def current_export(policy, ckpt: Path, meta: dict, train_cfg, loop_steps: list[int] = ()) -> Path:
    """``RUN/export-onnx`` for this checkpoint: exported now unless it records these very weights
    (the SHA-256 of model.safetensors; an export of other weights, or one without the hash, is
    replaced), with a whole-loop graph at each of ``loop_steps`` it does not have yet."""
    from cadence.cache_file import weights_sha256
    from cadence.deploy.export_spec import read_spec
    from cadence.deploy.loop_export import export_loop
    from cadence.deploy.loop_graph import exported_loop_steps
    from cadence.deploy.onnx_export import export_policy_onnx
    from cadence.export import export_control
    export_dir, digest = ckpt.parent / "export-onnx", weights_sha256(ckpt)
    try:
        current = read_spec(export_dir)["source"].get("weights_sha256") == digest
    except (OSError, CadenceError):
        current = False
    if not current:
        export_policy_onnx(policy, export_dir, source=str(ckpt), obs_shapes=meta["obs_shapes"], step=meta["step"],
                           weights_sha256=digest, control=export_control(train_cfg))
    missing = sorted(set(loop_steps) - set(exported_loop_steps(read_spec(export_dir))))
    if missing:
        export_loop(policy, export_dir, missing)
    return export_dir


def requested_loop_steps(policy, budget_cfg) -> list[int]:
    """The step counts to give whole-loop graphs when ``budget.runtimes`` names an ``onnx-*-loop``
    kind (not with ``auto``: each graph costs an export of its own): the candidates' counts up to
    the graphs' limit."""
    from cadence.deploy.budget import candidate_steps
    from cadence.deploy.loop_graph import loop_step_counts
    from cadence.deploy.runtimes import LOOP_KINDS
    if not any(str(k) in LOOP_KINDS for k in budget_cfg.runtimes) or not getattr(policy.process, "loop_graph", False):
        return []
    return loop_step_counts(candidate_steps(policy.process, budget_cfg.steps))


class RunFailed(CadenceError):
    """Episodes ran, but inference failed during them (the robot held instead): not a success."""


def deployable_verifier(budget_cfg, ckpt: Path):
    """The search verifier of the budget's K > 1 candidates (None when it tries none): never the
    oracle, which needs a copy of the world."""
    if max(int(k) for k in budget_cfg.candidates) <= 1:
        return None
    if str(budget_cfg.verifier) == "oracle":
        raise VerifierError("budget.verifier=oracle scores candidates in a copy of the simulator: not deployable on "
                            "a robot (use value, consensus, coherence or confidence)")
    return resolve_verifier(str(budget_cfg.verifier), budget_cfg.value, ckpt)


def run(cfg: DictConfig) -> dict:
    """Stop signals (SIGTERM, SIGINT, SIGHUP) unwind the run: the robot is held, the logs are
    written, one line says so and the exit status is 128 + the signal's number."""
    try:
        with stop_signals():
            return _run(cfg)
    except StopRequested as stop:
        print(f"cadence run: stopped by {stop.name}; the robot was held and the logs written", file=sys.stderr,
              flush=True)
        raise SystemExit(128 + stop.signum) from None


def _run(cfg: DictConfig) -> dict:
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    policy, train_cfg, meta = load_policy(ckpt, cfg.device, env_id=cfg.env_id)
    out = Path(cfg.out_dir or ckpt.parent / f"deploy-{datetime.now():%Y%m%d-%H%M%S}")
    obs_keys = list(train_cfg.task.obs_keys)
    delay = tuple(float(v) / 1e3 for v in cfg.control.inject_delay_ms)
    exec_horizon = int(cfg.control.exec_horizon or train_cfg.policy.exec_horizon)
    sim_rate = float(cfg.robot.rate_hz or cfg.control.rate_hz or train_cfg.task.fps)
    robot = SafetyFilter(make_robot(cfg.robot, train_cfg.task, sim_rate, meta["val_episodes"],
                                    cfg.control.action_lead_ms / 1e3), safety_limits(cfg.safety),
                         watchdog_timeout_s=None if cfg.safety.watchdog_ms is None else cfg.safety.watchdog_ms / 1e3)
    tick_log, results, worker, chosen, summary = TickLog(), [], None, None, None
    try:
        robot.connect()                        # a missing server or a wrong token shows up now
        rate = float(cfg.control.rate_hz or robot.spec.rate_hz)
        check_compatible(robot.spec, meta, obs_keys, rate)
        LoopConfig(rate, exec_horizon, cfg.control.blend, max_robot_errors=cfg.control.max_robot_errors)  # fail early
        budget_ms = float(cfg.budget.inference_ms or 1e3 / rate)
        runtime, chosen, measured = select_runtime(
            policy, cfg.budget, budget_ms, calibration_observations(train_cfg, cfg.budget.calibration),
            lambda: current_export(policy, ckpt, meta, train_cfg, requested_loop_steps(policy, cfg.budget)),
            cfg.device, threads=cfg.control.threads,
            verifier=deployable_verifier(cfg.budget, ckpt))
        print(budget_mod.format_table(measured, chosen))
        out.mkdir(parents=True, exist_ok=True)
        (out / "budget.json").write_text(json.dumps({"budget_ms": budget_ms, "chosen": chosen.to_json(),
                                                     "candidates": [m.to_json() for m in measured]}, indent=2))
        worker = InferenceWorker(runtime, start=policy.obs_horizon - 1, inject_delay_s=delay,
                                 seed=cfg.control.seed, threads=cfg.control.threads)
        worker.warm_up(calibration_observations(train_cfg, 1)[0])     # compile / capture on its own thread
        loop_cfg = LoopConfig(rate, exec_horizon, cfg.control.blend, cfg.control.ensemble_decay,
                              cfg.control.action_lead_ms / 1e3, latency_estimate_s=chosen.p99_ms / 1e3 + delay[1],
                              max_robot_errors=cfg.control.max_robot_errors)
        loop = ControlLoop(robot, worker, obs_keys, policy.obs_horizon, policy.pred_horizon - policy.obs_horizon + 1,
                           loop_cfg, log=tick_log)
        for i in tqdm(range(cfg.control.episodes), desc="episodes"):
            results.append(loop.run_episode(cfg.control.seed + i, cfg.control.max_ticks))
    finally:
        try:
            robot.disconnect()                 # holds the robot first
        except RobotError as exc:              # never connected, or gone: do not hide the first error
            log.warning("disconnecting the robot: %s", exc)
        if worker is not None:
            worker.stop()
        if chosen is not None:                 # whatever ran is logged, also after an error or a stop signal
            summary = _write_results(cfg, out, ckpt, rate, budget_ms, delay, chosen, results, tick_log, robot)
    failed = summary["timing"].get("inference_errors", 0)
    if failed:
        first = summary["timing"]["first_errors"].get("inference_errors", "")
        raise RunFailed(f"{out / 'summary.json'}: {failed} inference errors during the run (the robot held "
                        f"instead); the first: {first}")
    return summary


def _write_results(cfg, out: Path, ckpt: Path, rate: float, budget_ms: float, delay, chosen, results, tick_log,
                   robot) -> dict:
    timing = tick_log.summary(budget_ms + delay[1] * 1e3, 1 / rate)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if config["robot"].get("token"):
        config["robot"]["token"] = "<redacted>"          # a secret never reaches a file
    summary = {"checkpoint": str(ckpt), "robot": cfg.robot.driver, "rate_hz": rate, "blend": cfg.control.blend,
               "inject_delay_ms": list(cfg.control.inject_delay_ms), "chosen": chosen.candidate.label,
               "ok": not timing.get("inference_errors", 0),
               "episodes": len(results), "success_rate": float(np.mean([r.success for r in results])) if results else 0.0,
               "per_episode": [{"seed": r.seed, "success": r.success, "ticks": r.ticks,
                                "mode": r.info.get("mode", "none")} for r in results],
               "timing": timing,
               "safety": {"clamps": dict(robot.clamp_counts), "refused_commands": robot.refused,
                          "estop": robot.estop_reason},
               "config": config}
    report = getattr(robot.robot, "report", None)          # a replay robot: actions against the recording
    if callable(report):
        summary["replay"] = report()
    out.mkdir(parents=True, exist_ok=True)
    tick_log.write(out / "ticks.jsonl")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    t = summary["timing"]
    print(f"success {summary['success_rate']:.2f} over {len(results)} episodes | {t['ticks']} ticks, "
          f"jitter p50 {t['jitter_ms']['p50']:.2f} / p99 {t['jitter_ms']['p99']:.2f} ms, inference p50 "
          f"{t['inference_ms']['p50']:.1f} / p99 {t['inference_ms']['p99']:.1f} ms, deadline misses "
          f"{t['deadline_misses']}, inference errors {t.get('inference_errors', 0)}, late sends "
          f"{t['late_sends']} -> {out}", flush=True)
    if "replay" in summary:
        r = summary["replay"]
        print(f"replay: action L1 {r['action_l1']:.4f} against the recording over {r['steps_compared']} steps "
              f"({r['steps_without_action']} steps without an action)", flush=True)
        if r["episodes_cut_short"]:
            print(f"replay: {r['episodes_cut_short']} episodes ended before their recording did "
                  f"(control.max_ticks={cfg.control.max_ticks})", flush=True)
    return summary
