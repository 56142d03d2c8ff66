"""``cadence record``: teleoperated demonstrations into the task's episode store.

The robot (``robot=...``, behind the safety filter) is commanded at the task rate by a
teleoperator (``teleop=leader|keyboard|gamepad``; ``scripted`` in simulation); each episode is
written with one atomic append when it ends, so a killed recording loses at most the episode
in progress. Keys in the terminal decide each episode (:mod:`cadence.hardware.record_keys`):
keep it now, re-record it, discard it, or stop. An episode that ends on its own (the robot
reports ``done``, or ``record.episode_s`` passes) is kept, unless the robot reports it failed
and ``record.keep_failures`` is false. The store's fps is the recording rate.
"""
from __future__ import annotations

import contextlib
import sys
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from cadence.datasets.episode_store import EpisodeStore, StoreError
from cadence.datasets.staged_store import recover
from cadence.hardware.recorder import record_episode
from cadence.hardware.robot_config import safety_limits
from cadence.hardware.robot_factory import make_robot
from cadence.hardware.safety import SafetyFilter
from cadence.hardware.teleop_factory import make_teleop
from cadence.stop_signals import StopRequested, stop_signals


def run(cfg: DictConfig) -> dict:
    rate = float(cfg.robot.rate_hz or cfg.task.fps)
    rec = cfg.record
    path = Path(cfg.task.dataset)
    recover(path)
    store = EpisodeStore.open(path, mode="a") if path.exists() else None
    if store is not None and store.fps is not None and abs(store.fps - rate) > 1e-9:
        raise StoreError(f"{path}: holds episodes recorded at {store.fps:g} fps; this recording runs at {rate:g} "
                         "(set robot.rate_hz, or record into another task.dataset)")
    max_ticks = int(round(rec.episode_s * rate)) if rec.episode_s else 100_000
    keys = _terminal_keys()
    robot = SafetyFilter(make_robot(cfg.robot, cfg.task, rate), safety_limits(cfg.safety),
                         watchdog_timeout_s=None if cfg.safety.watchdog_ms is None else cfg.safety.watchdog_ms / 1e3)
    teleop = make_teleop(cfg.teleop, cfg.task, keys)
    outcomes, kept, seed = Counter(), 0, int(rec.seed) + (store.n_episodes if store is not None else 0)
    stopped_by = None
    with contextlib.ExitStack() as stack:
        if keys is not None:
            stack.enter_context(keys)
            decide = _decisions(keys)
            print(decide.HELP, flush=True)
        else:
            decide = None
        robot.connect()
        stack.callback(robot.disconnect)
        teleop.connect(robot.spec)
        stack.callback(teleop.disconnect)
        bar = stack.enter_context(tqdm(total=int(rec.episodes), desc=f"record {cfg.task.name}", unit="episode",
                                       dynamic_ncols=True))
        with stop_signals():
            try:
                while kept < rec.episodes:
                    recording = record_episode(robot, teleop, rate, action_key=cfg.task.action_key, seed=seed,
                                               max_ticks=max_ticks, decisions=decide.poll if decide else list,
                                               on_tick=lambda k: bar.set_postfix_str(f"tick {k}", refresh=False))
                    verdict = _verdict(recording, rec.keep_failures)
                    outcomes[verdict] += 1
                    if verdict == "kept":
                        store = store or EpisodeStore.create(path, fps=rate)
                        store.append_episode(recording.steps)
                        kept += 1
                        bar.update(1)
                    if verdict != "re-recorded":
                        seed += 1
                    bar.set_postfix(kept=kept, discarded=outcomes["discarded"] + outcomes["failed"],
                                    rerecorded=outcomes["re-recorded"], store=store.n_episodes if store else 0)
                    if recording.ended_by == "stop":
                        stopped_by = "the stop key"
                        break
            except StopRequested as stop:
                stopped_by = stop.name                 # the episode in progress is not written
    summary = {"path": str(path), "rate_hz": rate, "kept": kept, "outcomes": dict(outcomes),
               "total_episodes": store.n_episodes if store else 0, "steps": store.n_steps if store else 0}
    print(f"recorded {kept} episodes into {path} (now {summary['total_episodes']} episodes, {summary['steps']} steps); "
          f"outcomes {dict(outcomes)}" + (f"; stopped by {stopped_by}" if stopped_by else ""), flush=True)
    return summary


def _verdict(recording, keep_failures: bool) -> str:
    if recording.ended_by in ("discard",) or recording.length == 0:
        return "discarded"
    if recording.ended_by == "rerecord":
        return "re-recorded"
    if recording.ended_by in ("done", "max_ticks") and not keep_failures and recording.info.get("is_success") is False:
        return "failed"
    return "kept"


def _terminal_keys():
    """The terminal's keys when stdin is one (none in CI or when piped)."""
    if not sys.stdin.isatty():
        return None
    from cadence.hardware.terminal_keys import TerminalKeys
    keys = TerminalKeys(0)
    return keys if keys.active else None


def _decisions(keys):
    from cadence.hardware.record_keys import RecordKeys
    return RecordKeys(keys)
