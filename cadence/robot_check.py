"""``cadence robot check``: a conformance run on any robot driver (read-only unless ``--move``).

Prints one row per item (pass / fail / skip with what it measured), writes the same as JSON
to ``out`` and exits non-zero when any item fails. See :mod:`cadence.hardware.conformance`.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from cadence.hardware.conformance import CheckSettings, check_robot, report
from cadence.hardware.robot_factory import make_robot
from cadence.markdown_table import markdown_table


def run(cfg: DictConfig) -> dict:
    rate = float(cfg.robot.rate_hz or cfg.task.fps)
    robot = make_robot(cfg.robot, cfg.task, rate)
    c = cfg.check
    position = cfg.safety.position_obs
    settings = CheckSettings(move=bool(c.move), latency_fraction=float(c.latency_fraction), seconds=float(c.seconds),
                             settle_s=float(c.settle_s), hold_s=float(c.hold_s), hold_tolerance=float(c.hold_tolerance),
                             step=float(c.step), position=None if position is None else tuple(position))
    print(f"checking robot.driver={cfg.robot.driver} ({'moves allowed' if settings.move else 'read-only'})",
          flush=True)
    items = check_robot(robot, settings, progress=lambda i: print(f"  {i.name}: {i.result}", flush=True))
    result = {"driver": str(cfg.robot.driver), "move": settings.move, **report(items)}
    print(markdown_table(["item", "result", "measured", "detail"],
                         [[i.name, i.result.upper() if i.failed else i.result, i.measured, i.detail] for i in items]))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    failed = [i.name for i in items if i.failed]
    print(f"wrote {out}; " + (f"FAILED: {', '.join(failed)}" if failed else "all items pass"), flush=True)
    if failed:
        raise SystemExit(1)
    return result
