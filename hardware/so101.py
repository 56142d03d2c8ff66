"""The SO-100/SO-101 arm: six Feetech STS3215 servos on one serial bus, in LeRobot's units.

:class:`SO101Follower` is a :class:`~cadence.hardware.robot.Robot`: observation
``observation.state`` and action are the six positions (shoulder_pan, shoulder_lift,
elbow_flex, wrist_flex, wrist_roll, gripper), joints in [-100, 100] of their calibrated range
and the gripper in [0, 100], as LeRobot records them, so datasets and policies carry over.
A reader thread sync-reads Present_Position at ``rate_hz`` and keeps the newest observation;
``latest_observation`` only returns it (it never touches the bus). ``send_action`` writes all
six goals with one sync-write packet. :class:`SO101Leader` is a
:class:`~cadence.hardware.teleop.Teleop`: the same arm with torque off, moved by hand, whose
normalized positions are the follower's action.

On connect both write LeRobot's settings (position mode; follower P=16, I=0, D=32, gripper
torque and current limits) and the calibration into the motors, each only where the motor
holds a different value (most of them live in EEPROM). Torque is enabled only after the goal
was set to the present position, so connecting never makes the arm jump.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from cadence.hardware.arm_calibration import (GRIPPER, MOTOR_NAMES, NORM_HIGH, NORM_LOW, Calibration,
                                              MotorCalibration, apply_calibration, calibration_from_json,
                                              calibration_to_json, default_calibration, load_calibration,
                                              normalize, unnormalize)
from cadence.hardware.feetech_bus import STS3215_MODEL, FeetechBus, describe_error
from cadence.hardware.robot import Feature, Observation, RobotError, RobotSpec, RobotTimeout, checked_action

log = logging.getLogger(__name__)

STATE_KEY = "observation.state"
POSITION_MODE = 0
# LeRobot's settings: name -> value for every motor; then the gripper's own (it grips objects
# for long periods: lower torque and current so it does not burn out).
MOTOR_SETTINGS = {"Return_Delay_Time": 0, "Maximum_Acceleration": 254, "Acceleration": 254,
                  "Operating_Mode": POSITION_MODE}
FOLLOWER_GAINS = {"P_Coefficient": 16, "I_Coefficient": 0, "D_Coefficient": 32}
GRIPPER_SETTINGS = {"Max_Torque_Limit": 500, "Protection_Current": 250, "Overload_Torque": 25}


def resolve_calibration(calibration: str | os.PathLike | Mapping | None, who: str) -> Calibration:
    """A calibration from a file path, a mapping (loaded or JSON-like), or None (the default
    calibration, with a warning: it is for simulation, not for a real arm)."""
    if calibration is None:
        log.warning("%s: no calibration given; using the default calibration (for simulation: "
                    "a real arm needs its own, e.g. LeRobot's calibration file)", who)
        return default_calibration()
    if isinstance(calibration, Mapping):
        if all(isinstance(v, MotorCalibration) for v in calibration.values()):
            calibration = calibration_to_json(calibration)
        return calibration_from_json(dict(calibration), f"{who} calibration")
    return load_calibration(calibration)


class _Arm:
    """The bus and calibration of one arm, and what the follower and the leader both do."""

    def __init__(self, port: str, calibration: Calibration, label: str, timeout_ms: float):
        self.port, self.cal, self.label = str(port), calibration, label
        self.ids = {name: calibration[name].id for name in MOTOR_NAMES}
        self.bus = FeetechBus(self.port, timeout_ms=timeout_ms, label=label)

    @property
    def id_list(self) -> list[int]:
        return list(self.ids.values())

    def open_and_configure(self, gains: Mapping[str, int] | None, gripper_settings: bool) -> None:
        """Open the port, find all six motors, write settings and calibration, torque off."""
        self.bus.open()
        try:
            self._ping_all()
            self.bus.set_torque(self.id_list, False)
            for name, i in self.ids.items():
                settings = dict(MOTOR_SETTINGS, **(gains or {}))
                if gripper_settings and name == GRIPPER:
                    settings.update(GRIPPER_SETTINGS)
                for register, value in settings.items():
                    if self.bus.read(register, i) != value:
                        self.bus.write(register, i, value)
            apply_calibration(self.bus, self.cal)
        except BaseException:
            self.bus.close()
            raise

    def _ping_all(self) -> None:
        missing, models = [], {}
        for name, i in self.ids.items():
            try:
                models[name] = self.bus.ping(i)
            except RobotError:
                missing.append(name)
        if missing:
            which = ", ".join(f"{self.ids[n]} ({n})" for n in missing)
            raise RobotError(f"{self.label} on {self.port}: motor{'s' if len(missing) > 1 else ''} {which} did not "
                             "answer a ping (is the arm powered, and are the ids those of the calibration?)")
        odd = {n: m for n, m in models.items() if m != STS3215_MODEL}
        if odd:
            log.warning("%s on %s: not STS3215 (model %d): %s", self.label, self.port, STS3215_MODEL,
                        ", ".join(f"{n} is model {m}" for n, m in odd.items()))

    def read_raw(self) -> dict[str, int]:
        raw = self.bus.sync_read("Present_Position", self.id_list)
        return {name: raw[i] for name, i in self.ids.items()}

    def read_normalized(self) -> np.ndarray:
        return normalize(self.cal, self.read_raw())

    def write_goals(self, raw_by_name: Mapping[str, int]) -> None:
        self.bus.sync_write("Goal_Position", {self.ids[n]: int(v) for n, v in raw_by_name.items()})

    def motor_errors(self) -> dict[str, str]:
        errors = self.bus.errors
        return {name: describe_error(errors[i]) for name, i in self.ids.items() if i in errors}


class SO101Follower:
    """An SO-100/SO-101 follower arm as a :class:`~cadence.hardware.robot.Robot`.

    ``calibration``: a LeRobot calibration file (or a mapping); None uses
    :func:`~cadence.hardware.arm_calibration.default_calibration` with a warning.
    ``max_relative_target``: the largest change per command, in normalized units, around the
    present position (None: unbounded). ``start_pose``: where ``reset`` moves the arm (6
    normalized values), at ``reset_speed`` normalized units per second; None: ``reset`` does
    not move it. Counters: ``reads`` (successful position reads), ``read_errors``,
    ``overruns`` (reads that started late).
    """

    def __init__(self, port: str, calibration: str | os.PathLike | Mapping | None = None, rate_hz: float = 30.0,
                 max_relative_target: float | None = None, disable_torque_on_disconnect: bool = True,
                 start_pose: Sequence[float] | None = None, name: str = "so101", timeout_ms: float = 50.0,
                 reset_speed: float = 30.0, reset_timeout_s: float = 15.0):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        if max_relative_target is not None and not float(max_relative_target) > 0:
            raise ValueError(f"max_relative_target must be > 0 (or None), got {max_relative_target}")
        if not reset_speed > 0:
            raise ValueError(f"reset_speed must be > 0, got {reset_speed}")
        self._low, self._high = np.array(NORM_LOW), np.array(NORM_HIGH)
        if start_pose is not None:
            pose = np.asarray(start_pose, dtype=np.float64)
            if pose.shape != (len(MOTOR_NAMES),) or not np.all(np.isfinite(pose)):
                raise ValueError(f"start_pose must be {len(MOTOR_NAMES)} finite values ({', '.join(MOTOR_NAMES)}), "
                                 f"got {list(start_pose)}")
            if np.any(pose < self._low) or np.any(pose > self._high):
                raise ValueError(f"start_pose {pose.tolist()} is outside the action limits "
                                 f"{list(NORM_LOW)}..{list(NORM_HIGH)}")
            start_pose = pose
        self.name, self.port = name, str(port)
        self.rate_hz = float(rate_hz)
        self.max_relative_target = None if max_relative_target is None else float(max_relative_target)
        self.disable_torque_on_disconnect = bool(disable_torque_on_disconnect)
        self.start_pose: np.ndarray | None = start_pose
        self.reset_speed, self.reset_timeout_s = float(reset_speed), float(reset_timeout_s)
        self.calibration = resolve_calibration(calibration, name)
        feature = Feature((len(MOTOR_NAMES),), "float32", NORM_LOW, NORM_HIGH)
        self.spec = RobotSpec(name, {STATE_KEY: feature}, feature, self.rate_hz)
        self._arm = _Arm(self.port, self.calibration, "SO-101", timeout_ms)
        self._cmd_lock = threading.Lock()   # one command decision + bus write at a time
        self._connected = False
        self._estopped = False
        self._latest: Optional[Observation] = None
        self._seq = -1
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self.reads = self.read_errors = self.overruns = 0
        self.last_read_error: str | None = None

    @property
    def bus(self) -> FeetechBus:
        return self._arm.bus

    # --- Robot -------------------------------------------------------------------------
    def connect(self) -> None:
        if self._connected:
            return
        self._arm.open_and_configure(FOLLOWER_GAINS, gripper_settings=True)
        try:
            self._torque_on()
            self._seq = -1
            self._read_once()
        except BaseException:
            self._arm.bus.close()
            raise
        self._estopped = False
        self._connected = True
        self._stop.clear()
        self._reader = threading.Thread(target=self._read_loop, name=f"SO101Follower[{self.port}]", daemon=True)
        self._reader.start()
        log.info("%s on %s connected (torque on)", self.name, self.port)

    def reset(self, seed: int | None = None) -> Observation:
        """Turn torque back on if it was off (after an emergency stop), move to ``start_pose``
        if one is set, and return the newest observation. ``seed`` is ignored."""
        self.connect()
        with self._cmd_lock:
            if self._estopped:
                self._torque_on()
                self._estopped = False
                log.warning("%s: torque back on after the emergency stop", self.name)
        if self.start_pose is not None:
            self._move_to(self.start_pose)
        return self._fresh_observation()

    def latest_observation(self) -> Observation | None:
        return self._latest

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._require_connected()
        a = checked_action(self.name, action, self.spec.action.shape)
        a = np.clip(a, self._low, self._high)
        with self._cmd_lock:
            self._require_connected()
            if self._estopped:
                raise RobotError(f"{self.name}: emergency-stopped (torque off); reset() turns torque back on")
            if self.max_relative_target is not None:
                present = self._present()
                a = np.clip(a, present - self.max_relative_target, present + self.max_relative_target)
            self._arm.write_goals(unnormalize(self.calibration, a))
        return a.astype(np.float32)

    def hold(self) -> None:
        """Goal := the present position (read now). Nothing to do when not connected or when
        torque is off after an emergency stop."""
        with self._cmd_lock:
            if not self._connected or self._estopped:
                return
            self._arm.write_goals(self._arm.read_raw())

    def estop(self) -> None:
        """Torque off on all six motors at once (the arm goes limp: it may sag under gravity).
        ``send_action`` is refused until ``reset``."""
        self._estopped = True            # before the lock: a send_action waiting on it is refused
        with self._cmd_lock:
            if self._arm.bus.is_open:
                self._arm.bus.set_torque(self._arm.id_list, False)
        log.error("%s: emergency stop: torque off", self.name)

    def disconnect(self) -> None:
        """Stop reading, turn torque off (if ``disable_torque_on_disconnect``), close the port.
        Idempotent; afterwards ``latest_observation`` is None and commands are refused."""
        reader, self._reader = self._reader, None
        self._stop.set()
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5.0)
        with self._cmd_lock:
            was_connected, self._connected = self._connected, False
            self._latest = None
            if self._arm.bus.is_open:
                try:
                    if was_connected and self.disable_torque_on_disconnect:
                        self._arm.bus.set_torque(self._arm.id_list, False)
                finally:
                    self._arm.bus.close()
        if was_connected:
            log.info("%s on %s disconnected", self.name, self.port)

    # --- internals ---------------------------------------------------------------------
    def _require_connected(self) -> None:
        if not self._connected:
            raise RobotError(f"{self.name}: not connected")

    def _torque_on(self) -> None:
        """Goal := present position first, so the arm does not jump to a stale goal."""
        self._arm.write_goals(self._arm.read_raw())
        self._arm.bus.set_torque(self._arm.id_list, True)

    def _present(self) -> np.ndarray:
        obs = self._latest
        if obs is not None:
            return np.asarray(obs.values[STATE_KEY], dtype=np.float64)
        return self._arm.read_normalized().astype(np.float64)

    def _read_once(self) -> None:
        t0 = time.monotonic()
        state = self._arm.read_normalized()
        t_capture = (t0 + time.monotonic()) / 2     # the servos sample between request and answer
        errors = self._arm.motor_errors()
        self._seq += 1
        info: dict[str, Any] = {"motor_errors": errors} if errors else {}
        self._latest = Observation({STATE_KEY: state}, t_capture, self._seq, info)
        self.reads += 1

    def _read_loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic() + period
        failures = 0
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            try:
                self._read_once()
                failures = 0
            except RobotError as e:      # the observation ages; the safety watchdog sees it
                failures += 1
                self.read_errors += 1
                self.last_read_error = str(e)
                if failures == 1 or failures % max(1, int(self.rate_hz)) == 0:
                    log.warning("%s: reading positions failed (%d in a row): %s", self.name, failures, e)
            except Exception as e:  # noqa: BLE001  (a bug must not kill the stream silently)
                self.read_errors += 1
                self.last_read_error = repr(e)
                log.exception("%s: reader failed", self.name)
            next_t += period
            now = time.monotonic()
            if now > next_t:              # fell behind: skip to the next period
                self.overruns += 1
                next_t = now + period - ((now - next_t) % period)

    def _fresh_observation(self, timeout_s: float = 1.0) -> Observation:
        """The first observation read after now (it shows the pose reached)."""
        obs = self._latest
        seq = -1 if obs is None else obs.seq
        deadline = time.monotonic() + max(timeout_s, 3.0 / self.rate_hz)
        while time.monotonic() < deadline:
            obs = self._latest
            if obs is not None and obs.seq > seq:
                return obs
            time.sleep(min(0.005, 0.25 / self.rate_hz))
        if obs is None:
            raise RobotTimeout(f"{self.name}: no observation within {timeout_s:g} s ({self.last_read_error})")
        return obs

    def _move_to(self, target: np.ndarray, tolerance: float = 2.0) -> None:
        """Ramp the goal from the present pose to ``target`` at ``reset_speed``, then wait until
        the arm is within ``tolerance`` of it."""
        period = 1.0 / self.rate_hz
        step = self.reset_speed * period
        deadline = time.monotonic() + self.reset_timeout_s
        goal = self._arm.read_normalized().astype(np.float64)
        while True:
            last = bool(np.all(np.abs(target - goal) <= step))
            goal = target.copy() if last else goal + np.clip(target - goal, -step, step)
            with self._cmd_lock:
                self._require_connected()
                if self._estopped:
                    raise RobotError(f"{self.name}: emergency stop during reset")
                self._arm.write_goals(unnormalize(self.calibration, goal))
            if last:
                break
            time.sleep(period)
        while True:
            present = self._fresh_observation().values[STATE_KEY].astype(np.float64)
            error = np.abs(present - target)
            if np.all(error <= tolerance):
                return
            if time.monotonic() > deadline:
                worst = int(np.argmax(error))
                raise RobotError(f"{self.name}: did not reach the start pose within {self.reset_timeout_s:g} s "
                                 f"({MOTOR_NAMES[worst]} at {present[worst]:.1f}, wanted {target[worst]:.1f})")


class SO101Leader:
    """An SO-100/SO-101 leader arm as a :class:`~cadence.hardware.teleop.Teleop`: torque off,
    moved by a person; each ``action`` reads its six positions (one sync read, ~1 ms on the
    real bus) and returns them normalized, the follower's action. A failed read returns None
    (the follower holds) unless ``max_failures`` fail in a row, which raises RobotError."""

    def __init__(self, port: str, calibration: str | os.PathLike | Mapping | None = None,
                 name: str = "so101_leader", timeout_ms: float = 50.0, max_failures: int = 5):
        self.name, self.port = name, str(port)
        self.calibration = resolve_calibration(calibration, name)
        self.max_failures = int(max_failures)
        self._arm = _Arm(self.port, self.calibration, "SO-101 leader", timeout_ms)
        self._connected = False
        self._failures = 0
        self.read_errors = 0

    @property
    def bus(self) -> FeetechBus:
        return self._arm.bus

    def connect(self, spec: RobotSpec) -> None:
        if spec.action.shape != (len(MOTOR_NAMES),):
            raise RobotError(f"{self.name}: a leader arm drives a 6-D arm action ({', '.join(MOTOR_NAMES)}); "
                             f"{spec.name}'s action has shape {list(spec.action.shape)}")
        if self._connected:
            return
        self._arm.open_and_configure(None, gripper_settings=False)   # torque stays off
        self._connected = True
        self._failures = 0

    def reset(self, observation: Observation) -> None:
        pass

    def action(self, observation: Observation) -> Optional[np.ndarray]:
        if not self._connected:
            raise RobotError(f"{self.name}: not connected")
        try:
            values = self._arm.read_normalized()
        except RobotError as e:
            self._failures += 1
            self.read_errors += 1
            if self._failures >= self.max_failures:
                raise RobotError(f"{self.name}: {self._failures} reads in a row failed; last: {e}") from e
            log.warning("%s: read failed (%d in a row), holding: %s", self.name, self._failures, e)
            return None
        self._failures = 0
        return values

    def disconnect(self) -> None:
        self._connected = False
        self._arm.bus.close()
