"""``cadence robot calibrate``: an SO-100/SO-101 arm's calibration, written as LeRobot's JSON.

Two steps, as LeRobot calibrates: (1) the arm held in the middle of its travel, Enter: each
motor's homing offset is set so that pose reads the middle of the turn; (2) every joint moved
through its whole range (torque off), Enter (or ``seconds`` later): the ranges recorded. The
file is written atomically; pass it as ``robot.options.calibration`` (follower) or
``teleop.options.calibration`` (leader).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

from omegaconf import DictConfig

from cadence.hardware.arm_calibration import MOTOR_NAMES, record_ranges, save_calibration, set_half_turn_homing
from cadence.hardware.feetech_bus import FeetechBus
from cadence.markdown_table import markdown_table


def _enter(prompt: str) -> None:
    print(prompt, flush=True)
    sys.stdin.readline()                 # Enter; end of input counts as Enter (scripts, CI)


def run(cfg: DictConfig) -> dict:
    motors = {name: i + 1 for i, name in enumerate(MOTOR_NAMES)}
    with FeetechBus(cfg.port, timeout_ms=cfg.timeout_ms, label="SO-101") as bus:
        _enter("1/2: move the arm to the middle of its travel (every joint), then press Enter")
        set_half_turn_homing(bus, motors)
        stop: threading.Event | float
        if cfg.seconds:
            print(f"2/2: move every joint through its whole range (recording for {cfg.seconds:g} s)", flush=True)
            stop = float(cfg.seconds)
        else:
            stop = threading.Event()
            threading.Thread(target=lambda: (_enter("2/2: move every joint through its whole range, then press "
                                                    "Enter"), stop.set()), daemon=True).start()
        calibration = record_ranges(bus, motors, stop, full_turn=list(cfg.full_turn))
    out = Path(cfg.out)
    save_calibration(calibration, out)
    print(markdown_table(["motor", "id", "homing offset", "range min", "range max"],
                         [[n, str(m.id), str(m.homing_offset), str(m.range_min), str(m.range_max)]
                          for n, m in calibration.items()]))
    print(f"wrote {out}: pass it as robot.options.calibration={out} (or teleop.options.calibration for a leader)",
          flush=True)
    return {"out": str(out)}
