"""``teleop=gamepad``: a position-controlled robot moved by gamepad sticks, through the Linux
joystick API (``/dev/input/js*``), with no dependency beyond the standard library.

The device file delivers 8-byte records, ``struct js_event {u32 time_ms; s16 value; u8 type;
u8 number}``: type 0x01 a button (value 1 pressed, 0 released), 0x02 an axis (value -32767 ..
32767), or-ed with 0x80 for the synthetic events that report the state at open. A daemon thread
keeps the newest value of every axis and button; the control loop reads them without waiting.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time
from typing import Optional, Sequence

import numpy as np

from cadence.hardware.robot import Observation, RobotError, RobotSpec
from cadence.hardware.teleop_target import PositionTarget

JS_EVENT = struct.Struct("=IhBB")        # the kernel's struct js_event, native byte order
JS_BUTTON, JS_AXIS, JS_INIT = 0x01, 0x02, 0x80
AXIS_MAX = 32767.0
MAX_DT_S = 0.25                           # a stalled tick moves the target no further than this long
POLL_S = 0.05                             # the reader checks for disconnect at least this often


class GamepadTeleop:
    """A :class:`~cadence.hardware.teleop.Teleop` that moves a position target at stick speed.

    Action element ``i`` is driven by axis ``axes[i]`` (default axis ``i`` for every element;
    a shorter list leaves the remaining elements where they start). Each :meth:`action` call
    adds ``v * speed * (high - low) * dt`` to the target, clipped to the action limits, where
    ``dt`` is the time since the previous call (at most :data:`MAX_DT_S`) and ``v`` the axis
    value in [-1, 1] with the ``deadzone`` around the centre removed and the rest rescaled, so
    motion starts from zero at its edge: full deflection moves ``speed`` of the range per
    second. The target starts at each :meth:`reset` from the measured position (``position``
    as for :class:`~cadence.hardware.keyboard_teleop.KeyboardTeleop`).

    Axes are taken as the device reports them, including the state at open: triggers that
    rest at -32767 drive their element at full speed, so leave them out of ``axes``. When the
    device goes away the sticks read as centred (the target holds) and :attr:`error` says why.
    """

    def __init__(self, device: str = "/dev/input/js0", speed: float = 0.5, axes: Optional[Sequence[int]] = None,
                 deadzone: float = 0.1, position: Optional[Sequence] = None):
        if not float(speed) > 0:
            raise RobotError(f"teleop=gamepad: speed must be > 0 (fraction of the range per second), got {speed}")
        if not 0.0 <= float(deadzone) < 1.0:
            raise RobotError(f"teleop=gamepad: deadzone must be in [0, 1), got {deadzone}")
        self.device = str(device)
        self.speed = float(speed)
        self.axes = None if axes is None else [int(a) for a in axes]
        self.deadzone = float(deadzone)
        self.position = position
        self.error: Optional[str] = None
        self._target: Optional[PositionTarget] = None
        self._axis_of: list[int] = []
        self._axis_values: dict[int, int] = {}
        self._pressed: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._fd: Optional[int] = None
        self._last: Optional[float] = None

    def connect(self, spec: RobotSpec) -> None:
        target = PositionTarget(spec, self.position, "teleop=gamepad")
        n = target.low.size
        axis_of = list(range(n)) if self.axes is None else self.axes
        if len(axis_of) > n or any(a < 0 for a in axis_of):
            raise RobotError(f"teleop=gamepad: axes={axis_of} should name at most {n} axes (numbers >= 0), "
                             "one per action element")
        if self._thread is not None:
            self.disconnect()
        try:
            fd = os.open(self.device, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise RobotError(f"teleop=gamepad: cannot open {self.device}: {exc.strerror or exc} "
                             "(is the gamepad plugged in, and is the file readable by this user?)") from None
        self._target, self._axis_of, self._fd, self.error = target, axis_of, fd, None
        with self._lock:
            self._axis_values.clear()
            self._pressed.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, args=(fd,), name="gamepad", daemon=True)
        self._thread.start()

    def reset(self, observation: Observation) -> None:
        self._require().reset(observation)
        self._last = time.monotonic()

    def action(self, observation: Observation) -> Optional[np.ndarray]:
        """The target moved by the sticks since the last call; ``None`` before the first reset."""
        target = self._require()
        if target.value is None:
            return None
        now = time.monotonic()
        dt = min(MAX_DT_S, max(0.0, now - (self._last if self._last is not None else now)))
        self._last = now
        with self._lock:
            raw = np.array([self._axis_values.get(a, 0) for a in self._axis_of], np.float64)
        velocity = np.zeros_like(target.low)
        velocity[:raw.size] = self._shape(raw / AXIS_MAX)
        target.move(velocity * self.speed * target.range * dt)
        return target.command()

    def buttons(self) -> list[int]:
        """The numbers of the buttons held down now, ascending."""
        with self._lock:
            return sorted(self._pressed)

    def axis_values(self) -> dict[int, int]:
        """The newest raw value (-32767 .. 32767) of every axis the device has reported."""
        with self._lock:
            return dict(self._axis_values)

    def disconnect(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=1.0)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _shape(self, v: np.ndarray) -> np.ndarray:
        v = np.clip(v, -1.0, 1.0)
        magnitude = np.maximum(np.abs(v) - self.deadzone, 0.0) / (1.0 - self.deadzone)
        return np.sign(v) * magnitude

    def _require(self) -> PositionTarget:
        if self._target is None or self._thread is None:
            raise RobotError(f"teleop=gamepad ({self.device}): not connected")
        return self._target

    def _read(self, fd: int) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], POLL_S)
                if not ready:
                    continue
                data = os.read(fd, JS_EVENT.size * 64)
            except BlockingIOError:
                continue
            except (OSError, ValueError) as exc:
                self._lost(f"{self.device}: {getattr(exc, 'strerror', None) or exc}")
                return
            if not data:
                self._lost(f"{self.device}: closed")
                return
            pending += data
            whole = len(pending) - len(pending) % JS_EVENT.size
            events, pending = pending[:whole], pending[whole:]
            with self._lock:
                for _time_ms, value, kind, number in JS_EVENT.iter_unpack(events):
                    kind &= ~JS_INIT
                    if kind == JS_AXIS:
                        self._axis_values[number] = value
                    elif kind == JS_BUTTON:
                        if value:
                            self._pressed.add(number)
                        else:
                            self._pressed.discard(number)

    def _lost(self, why: str) -> None:
        with self._lock:
            self._axis_values.clear()
            self._pressed.clear()
        self.error = why
