"""SO-100/SO-101 calibration: LeRobot's JSON file format, normalization, and recording one.

The file is LeRobot's own, so a LeRobot user's calibration loads as is::

    {"shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1234, "range_min": 750, "range_max": 3300}, ...}

one entry per motor of the arm (:data:`MOTOR_NAMES`). ``homing_offset`` is what the servo's
Homing_Offset register holds (Present_Position = physical position - homing_offset);
``range_min``/``range_max`` are Present_Position values at the ends of the joint's travel.
Normalization is LeRobot's: a joint maps its range linearly onto [-100, 100], the gripper onto
[0, 100]; ``drive_mode`` 1 inverts the direction. Values outside the range are clipped to it.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from cadence.hardware.robot import RobotError

log = logging.getLogger(__name__)

MOTOR_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
GRIPPER = "gripper"
RESOLUTION = 4096                 # STS3215 steps per turn
HALF_TURN = RESOLUTION // 2 - 1   # 2047: the middle of the range after homing
MAX_ID = 252
MAX_HOMING_OFFSET = 2047          # 11-bit magnitude (sign-magnitude register, sign bit 11)
FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")
#: normalized bounds, in MOTOR_NAMES order
NORM_LOW = tuple(0.0 if m == GRIPPER else -100.0 for m in MOTOR_NAMES)
NORM_HIGH = tuple(100.0 for _ in MOTOR_NAMES)


class CalibrationError(RobotError):
    """A calibration file or a recorded calibration is unusable; the message says why."""


@dataclass(frozen=True)
class MotorCalibration:
    """One motor's calibration, in LeRobot's fields."""

    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int


Calibration = dict[str, MotorCalibration]


# --- the file --------------------------------------------------------------------------
def calibration_from_json(data: Any, source: str = "calibration") -> Calibration:
    """A checked calibration from parsed JSON; ``source`` (a file name) starts every error."""
    if not isinstance(data, dict):
        raise CalibrationError(f"{source}: a calibration is a JSON object of motors, got {type(data).__name__}")
    missing = [m for m in MOTOR_NAMES if m not in data]
    unknown = sorted(set(data) - set(MOTOR_NAMES))
    if unknown:
        raise CalibrationError(f"{source}: unknown motor {unknown[0]!r}; an SO-100/SO-101 arm has "
                               f"{', '.join(MOTOR_NAMES)}")
    if missing:
        raise CalibrationError(f"{source}: no calibration for motor {missing[0]!r}")
    cal: Calibration = {}
    for name in MOTOR_NAMES:
        entry = data[name]
        if not isinstance(entry, dict):
            raise CalibrationError(f"{source}: {name} must be an object with {', '.join(FIELDS)}")
        for key in FIELDS:
            if key not in entry:
                raise CalibrationError(f"{source}: {name}.{key} is missing")
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise CalibrationError(f"{source}: {name}.{key} must be an integer, got {value!r}")
        extra = sorted(set(entry) - set(FIELDS))
        if extra:
            raise CalibrationError(f"{source}: {name}.{extra[0]} is not a calibration field ({', '.join(FIELDS)})")
        m = MotorCalibration(**{k: entry[k] for k in FIELDS})
        if not 0 <= m.id <= MAX_ID:
            raise CalibrationError(f"{source}: {name}.id must be in 0..{MAX_ID}, got {m.id}")
        if m.drive_mode not in (0, 1):
            raise CalibrationError(f"{source}: {name}.drive_mode must be 0 or 1, got {m.drive_mode}")
        if abs(m.homing_offset) > MAX_HOMING_OFFSET:
            raise CalibrationError(f"{source}: {name}.homing_offset must be within ±{MAX_HOMING_OFFSET}, "
                                   f"got {m.homing_offset}")
        if not 0 <= m.range_min < m.range_max <= RESOLUTION - 1:
            raise CalibrationError(f"{source}: {name} range must satisfy 0 <= range_min < range_max <= "
                                   f"{RESOLUTION - 1}, got range_min {m.range_min}, range_max {m.range_max}")
        cal[name] = m
    owner: dict[int, str] = {}
    for name, m in cal.items():
        if m.id in owner:
            raise CalibrationError(f"{source}: {name}.id {m.id} is also {owner[m.id]}'s id")
        owner[m.id] = name
    return cal


def calibration_to_json(cal: Mapping[str, MotorCalibration]) -> dict[str, dict[str, int]]:
    return {name: asdict(cal[name]) for name in MOTOR_NAMES if name in cal}


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read and check a calibration file (LeRobot's format)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CalibrationError(f"{path}: cannot read the calibration file: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    return calibration_from_json(data, str(path))


def save_calibration(cal: Mapping[str, MotorCalibration], path: str | os.PathLike) -> None:
    """Write ``cal`` atomically (a reader sees the old file or the new one, never half)."""
    data = calibration_to_json(cal)
    calibration_from_json(data, f"calibration for {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=4)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def default_calibration() -> Calibration:
    """Ids 1..6, no homing offset, 3/4 of a turn centred on the middle: for simulation and
    for trying a driver, never for a real arm (its ranges are not these)."""
    return {name: MotorCalibration(id=i, drive_mode=0, homing_offset=0, range_min=500, range_max=3596)
            for i, name in enumerate(MOTOR_NAMES, start=1)}


# --- normalization ---------------------------------------------------------------------
def normalize_position(m: MotorCalibration, raw: float, gripper: bool = False) -> float:
    """Present_Position ``raw`` in LeRobot's units: [-100, 100], or [0, 100] for the gripper."""
    bounded = min(max(float(raw), m.range_min), m.range_max)
    fraction = (bounded - m.range_min) / (m.range_max - m.range_min)
    if gripper:
        return 100.0 - fraction * 100.0 if m.drive_mode else fraction * 100.0
    value = fraction * 200.0 - 100.0
    return -value if m.drive_mode else value


def unnormalize_position(m: MotorCalibration, value: float, gripper: bool = False) -> int:
    """The Goal_Position for normalized ``value`` (clipped to the normalized range)."""
    if gripper:
        v = 100.0 - value if m.drive_mode else value
        fraction = min(max(v, 0.0), 100.0) / 100.0
    else:
        v = -value if m.drive_mode else value
        fraction = (min(max(v, -100.0), 100.0) + 100.0) / 200.0
    return int(round(m.range_min + fraction * (m.range_max - m.range_min)))


def normalize(cal: Mapping[str, MotorCalibration], raw: Mapping[str, float]) -> np.ndarray:
    """Positions by motor name -> float32 vector in :data:`MOTOR_NAMES` order."""
    return np.array([normalize_position(cal[n], raw[n], n == GRIPPER) for n in MOTOR_NAMES], np.float32)


def unnormalize(cal: Mapping[str, MotorCalibration], values: Iterable[float]) -> dict[str, int]:
    """A vector in :data:`MOTOR_NAMES` order -> Goal_Position by motor name."""
    values = [float(v) for v in values]
    if len(values) != len(MOTOR_NAMES):
        raise ValueError(f"expected {len(MOTOR_NAMES)} values ({', '.join(MOTOR_NAMES)}), got {len(values)}")
    return {n: unnormalize_position(cal[n], v, n == GRIPPER) for n, v in zip(MOTOR_NAMES, values)}


# --- on the motors ---------------------------------------------------------------------
def apply_calibration(bus, cal: Mapping[str, MotorCalibration]) -> list[str]:
    """Make the motors hold ``cal`` (Homing_Offset, Min/Max_Position_Limit), as LeRobot writes
    them: only values that differ are written (they live in EEPROM). Torque must be off and
    the EEPROM unlocked (``bus.set_torque(ids, False)``). Returns the motors written."""
    written = []
    for name, m in cal.items():
        wanted = {"Homing_Offset": m.homing_offset, "Min_Position_Limit": m.range_min,
                  "Max_Position_Limit": m.range_max}
        stale = {reg: v for reg, v in wanted.items() if bus.read(reg, m.id) != v}
        for reg, v in stale.items():
            bus.write(reg, m.id, v)
        if stale:
            written.append(name)
    if written:
        log.info("%s: wrote the calibration to %s", getattr(bus, "port", "bus"), ", ".join(written))
    return written


def set_half_turn_homing(bus, motors: Mapping[str, int]) -> dict[str, int]:
    """Set each motor's Homing_Offset so that where it stands now reads the middle (2047),
    as LeRobot does before recording ranges (the arm held in the middle of its travel).
    Resets the position limits to a full turn. Turns torque off. Returns the offsets."""
    ids = list(motors.values())
    bus.set_torque(ids, False)
    for i in ids:
        bus.write("Homing_Offset", i, 0)
        bus.write("Min_Position_Limit", i, 0)
        bus.write("Max_Position_Limit", i, RESOLUTION - 1)
    present = bus.sync_read("Present_Position", ids)
    offsets = {}
    for name, i in motors.items():
        offsets[name] = present[i] - HALF_TURN
        bus.write("Homing_Offset", i, offsets[name])
    return offsets


def record_ranges(bus, motors: Mapping[str, int], stop: threading.Event | float, *,
                  full_turn: Iterable[str] = (), poll_hz: float = 50.0,
                  progress: Callable[[dict[str, int], dict[str, int], dict[str, int]], None] | None = None,
                  ) -> Calibration:
    """Record each joint's range while a person moves it through its travel (torque off).

    ``motors``: name -> id. Runs until ``stop`` is set (an Event) or for ``stop`` seconds,
    polling Present_Position at ``poll_hz``; ``progress(present, mins, maxes)`` is called after
    each poll (a live display). Motors in ``full_turn`` (LeRobot: ``wrist_roll``) get the full
    turn, 0..4095. The homing offsets are the motors' own. Raises CalibrationError naming the
    joints that did not move.
    """
    if not motors:
        raise CalibrationError("record_ranges: no motors given")
    full_turn = set(full_turn)
    ids = list(motors.values())
    bus.set_torque(ids, False)
    offsets = {name: bus.read("Homing_Offset", i) for name, i in motors.items()}
    deadline = None if isinstance(stop, threading.Event) else time.monotonic() + float(stop)
    period = 1.0 / poll_hz
    mins: dict[str, int] = {}
    maxes: dict[str, int] = {}
    while True:
        raw = bus.sync_read("Present_Position", ids)
        present = {name: raw[i] for name, i in motors.items()}
        for name, p in present.items():
            mins[name] = min(mins.get(name, p), p)
            maxes[name] = max(maxes.get(name, p), p)
        if progress is not None:
            progress(present, dict(mins), dict(maxes))
        if deadline is None:
            if stop.wait(period):
                break
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(period, left))
    still = [n for n in motors if n not in full_turn and maxes[n] <= mins[n]]
    if still:
        raise CalibrationError(f"record_ranges: {', '.join(still)} did not move; move every joint "
                               "through its whole travel while recording")
    return {name: MotorCalibration(id=i, drive_mode=0, homing_offset=offsets[name],
                                   range_min=0 if name in full_turn else mins[name],
                                   range_max=RESOLUTION - 1 if name in full_turn else maxes[name])
            for name, i in motors.items()}
