"""A bus of simulated Feetech STS3215 servos behind a pseudo-terminal, for tests without an arm.

:class:`FeetechBusSim` opens a pty and answers on it exactly what real servos answer on their
half-duplex serial bus (Feetech protocol 0, as the SO-100/SO-101 arms use): the driver under
test opens ``sim.port`` with pyserial and the vendor SDK, so its real serial code runs,
byte for byte. Packets:

* instruction ``FF FF ID LEN INSTR PARAMS.. CHK``, status ``FF FF ID LEN ERR PARAMS.. CHK``,
  ``LEN`` = number of bytes after it, ``CHK = ~(ID + LEN + INSTR|ERR + sum(PARAMS)) & 0xFF``,
  2-byte registers little-endian;
* PING (0x01), READ (0x02), WRITE (0x03) to one id answer one status packet; to the broadcast
  id 0xFE a WRITE applies to every motor and nobody answers; a broadcast PING is answered by
  every motor, in id order;
* SYNC_READ (0x82, to 0xFE: ``addr len id..``) is answered by one status packet per listed id
  that exists, in the order listed; SYNC_WRITE (0x83: ``addr len (id data..)..``) by nobody;
* a packet with a bad checksum is ignored (no answer), as real servos do; bytes that are not
  a packet are skipped up to the next ``FF FF`` header.

Each motor has a 256-byte register file laid out as the STS3215 control table (addresses
below). The motor model runs in real time on the simulator's thread: with torque on,
Present_Position moves toward Goal_Position (clamped to the position limits) at a bounded
speed along a first-order lag, so small moves settle within ~100 ms; with torque off it stays
where it is until someone moves it by hand (:meth:`set_position`, e.g. a leader arm in a test).
Present_Position = physical position - Homing_Offset (mod 4096), as on the real servo.
"""
from __future__ import annotations

import math
import os
import select
import termios
import threading
import time
import tty
from collections import Counter
from typing import Iterable

# STS3215 control table (address, bytes); the ones the simulator gives a meaning to.
MODEL_NUMBER = 3          # 2, read-only
ID = 5
BAUD_RATE = 6
RETURN_DELAY_TIME = 7
MIN_POSITION_LIMIT = 9    # 2
MAX_POSITION_LIMIT = 11   # 2
P_COEFFICIENT = 21
D_COEFFICIENT = 22
I_COEFFICIENT = 23
HOMING_OFFSET = 31        # 2, sign-magnitude, sign bit 11
OPERATING_MODE = 33
TORQUE_ENABLE = 40
ACCELERATION = 41
GOAL_POSITION = 42        # 2
GOAL_VELOCITY = 46        # 2, sign-magnitude, sign bit 15 (a speed limit in position mode)
LOCK = 55
PRESENT_POSITION = 56     # 2, read-only from here on
PRESENT_VELOCITY = 58     # 2, sign-magnitude, sign bit 15
PRESENT_LOAD = 60         # 2
PRESENT_VOLTAGE = 62      # 0.1 V
PRESENT_TEMPERATURE = 63  # deg C
MOVING = 66
PRESENT_CURRENT = 69      # 2
READ_ONLY = frozenset(range(0, 5)) | frozenset(range(PRESENT_POSITION, 80))

BROADCAST_ID = 0xFE
PING, READ, WRITE, SYNC_READ, SYNC_WRITE = 0x01, 0x02, 0x03, 0x82, 0x83
MAX_PACKET = 250            # the SDK's TXPACKET_MAX_LEN: a LEN beyond it is not a header
STALE_PARTIAL_S = 0.02      # an incomplete packet this old is garbage: resync past it
RESOLUTION = 4096


def checksum(body: bytes | bytearray | Iterable[int]) -> int:
    """The Feetech checksum of the bytes between the header and the checksum."""
    return ~sum(body) & 0xFF


def packet(ident: int, code: int, params: bytes | Iterable[int] = b"") -> bytes:
    """A complete packet: ``code`` is the instruction (to a servo) or the error byte (from one)."""
    params = bytes(params)
    body = bytes((ident, len(params) + 2, code)) + params
    return b"\xff\xff" + body + bytes((checksum(body),))


def _sign_magnitude(raw: int, bit: int) -> int:
    return -(raw & ~(1 << bit)) if raw & (1 << bit) else raw


def _to_sign_magnitude(value: int, bit: int) -> int:
    return (min(-value, (1 << bit) - 1) | (1 << bit)) if value < 0 else min(value, (1 << bit) - 1)


class _Motor:
    """One servo: its register file and its physical (offset-free) position."""

    def __init__(self, ident: int, model: int, position: float):
        self.regs = bytearray(256)
        self.phys = float(position)
        self.online = True
        self.error = 0
        self._set(MODEL_NUMBER, 2, model)
        self._set(ID, 1, ident)
        self._set(MAX_POSITION_LIMIT, 2, RESOLUTION - 1)
        self._set(P_COEFFICIENT, 1, 32)
        self._set(D_COEFFICIENT, 1, 32)
        self._set(RETURN_DELAY_TIME, 1, 250)
        self._set(PRESENT_VOLTAGE, 1, 120)
        self._set(PRESENT_TEMPERATURE, 1, 30)
        self._set(GOAL_POSITION, 2, int(round(position)))
        self.publish(0.0)

    def get(self, addr: int, size: int) -> int:
        return int.from_bytes(self.regs[addr:addr + size], "little")

    def _set(self, addr: int, size: int, value: int) -> None:
        self.regs[addr:addr + size] = int(value).to_bytes(size, "little")

    @property
    def offset(self) -> int:
        return _sign_magnitude(self.get(HOMING_OFFSET, 2), 11)

    def present(self) -> int:
        return (int(round(self.phys)) - self.offset) % RESOLUTION

    def target(self) -> float:
        """Where the motor drives to: the goal, clamped to the limits, in physical steps."""
        goal = self.get(GOAL_POSITION, 2)
        low, high = self.get(MIN_POSITION_LIMIT, 2), self.get(MAX_POSITION_LIMIT, 2)
        if low < high:
            goal = min(max(goal, low), high)
        return float(goal + self.offset)

    def advance(self, dt: float, max_speed: float, time_constant: float) -> None:
        velocity = 0.0
        if self.get(TORQUE_ENABLE, 1) and dt > 0:
            error = self.target() - self.phys
            speed = max_speed
            limit = _sign_magnitude(self.get(GOAL_VELOCITY, 2), 15)
            if limit > 0:
                speed = min(speed, float(limit))
            step = error * (1.0 - math.exp(-dt / time_constant))
            step = max(-speed * dt, min(speed * dt, step))
            if abs(error - step) < 0.5:
                step = error
            self.phys += step
            velocity = step / dt
        self.publish(velocity)

    def publish(self, velocity: float) -> None:
        """Refresh the read-only status registers from the model."""
        self._set(PRESENT_POSITION, 2, self.present())
        self._set(PRESENT_VELOCITY, 2, _to_sign_magnitude(int(round(velocity)), 15))
        torque = self.get(TORQUE_ENABLE, 1) != 0
        self._set(MOVING, 1, int(torque and abs(self.target() - self.phys) >= 1.0))
        self._set(PRESENT_CURRENT, 2, min(int(abs(velocity) / 30), 500) if torque else 0)
        self._set(PRESENT_LOAD, 2, min(int(abs(velocity) / 10), 1000) if torque else 0)


class FeetechBusSim:
    """Simulated STS3215 servos (ids ``ids``, model number ``model``) on a pseudo-terminal.

    ``start()`` then open ``port`` as you would ``/dev/ttyACM0``. Counters: ``packets``
    (well-formed instruction packets received, by instruction code in ``served``),
    ``replies`` (status packets sent), ``bad_checksums``, ``skipped_bytes`` (garbage dropped
    while resynchronising).
    """

    def __init__(self, ids: Iterable[int] = (1, 2, 3, 4, 5, 6), model: int = 777,
                 position: int = 2048, max_speed: float = 3000.0, time_constant_s: float = 0.02):
        self._motors = {int(i): _Motor(int(i), model, position) for i in ids}
        self.max_speed, self.time_constant_s = float(max_speed), float(time_constant_s)
        self.port: str | None = None
        self._master = self._slave = -1
        self._wake_r = self._wake_w = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_advance = time.monotonic()
        self.packets = self.replies = self.bad_checksums = self.skipped_bytes = 0
        self.served: Counter[int] = Counter()
        self.error: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> "FeetechBusSim":
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        for fd in (self._master, self._slave):
            tty.setraw(fd, termios.TCSANOW)
        self.port = os.ttyname(self._slave)   # the slave stays open here: no EIO between clients
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._last_advance = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"FeetechBusSim[{self.port}]", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        thread.join(timeout=5.0)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = self._wake_r = self._wake_w = -1

    def __enter__(self) -> "FeetechBusSim":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- test-side access --------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._motors)

    def register(self, ident: int, addr: int, size: int = 1) -> int:
        """The unsigned value of register ``addr`` (``size`` bytes) of motor ``ident``, now."""
        with self._lock:
            self._advance_locked()
            return self._motors[ident].get(addr, size)

    def position(self, ident: int) -> int:
        """Present_Position of motor ``ident``, now."""
        return self.register(ident, PRESENT_POSITION, 2)

    def set_position(self, ident: int, raw: int) -> None:
        """Move motor ``ident`` by hand so that its Present_Position reads ``raw`` (a person
        moving a leader arm; with torque on the motor drives back to its goal)."""
        with self._lock:
            self._advance_locked()
            motor = self._motors[ident]
            motor.phys = float(int(raw) % RESOLUTION + motor.offset)
            motor.publish(0.0)

    def set_online(self, ident: int, online: bool) -> None:
        """Unplug (``False``) or plug back a motor: an unplugged motor answers nothing."""
        with self._lock:
            self._motors[ident].online = bool(online)

    def set_error(self, ident: int, error: int) -> None:
        """The error byte motor ``ident`` puts in its status packets (e.g. 0x20 overload)."""
        with self._lock:
            self._motors[ident].error = int(error) & 0x7F

    # --- the simulator's thread --------------------------------------------------------
    def _run(self) -> None:
        buf = bytearray()
        partial_since: float | None = None
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._master, self._wake_r], [], [], 0.005)
                if self._stop.is_set():
                    break
                if self._master in ready:
                    try:
                        buf += os.read(self._master, 4096)
                    except OSError:   # EIO: no slave open (cannot happen while we hold it)
                        time.sleep(0.001)
                out = bytearray()
                with self._lock:
                    self._advance_locked()
                    while True:
                        instruction = self._next_packet(buf)
                        if instruction is None:
                            break
                        out += self._serve(*instruction)
                if buf:   # an incomplete packet: garbage if it never completes
                    now = time.monotonic()
                    partial_since = partial_since or now
                    if now - partial_since > STALE_PARTIAL_S:
                        del buf[0]
                        self.skipped_bytes += 1
                        partial_since = None
                else:
                    partial_since = None
                if out:
                    os.write(self._master, bytes(out))
        except BaseException as e:  # noqa: BLE001  (kept for the test to see)
            self.error = e

    def _advance_locked(self) -> None:
        now = time.monotonic()
        dt, self._last_advance = now - self._last_advance, now
        for motor in self._motors.values():
            motor.advance(dt, self.max_speed, self.time_constant_s)

    def _next_packet(self, buf: bytearray) -> tuple[int, int, bytes] | None:
        """Take the next well-formed packet off ``buf``: (id, instruction, params); None when
        ``buf`` holds no complete one yet. Garbage and bad checksums are dropped."""
        while True:
            start = buf.find(b"\xff\xff")
            if start < 0:
                keep = 1 if buf[-1:] == b"\xff" else 0
                self.skipped_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                return None
            if start:
                self.skipped_bytes += start
                del buf[:start]
            if len(buf) < 4:
                return None
            ident, length = buf[2], buf[3]
            if ident == 0xFF or length < 2 or length + 4 > MAX_PACKET:   # not a header: resync
                del buf[0]
                self.skipped_bytes += 1
                continue
            if len(buf) < length + 4:
                return None
            body, chk = bytes(buf[2:length + 3]), buf[length + 3]
            if checksum(body) != chk:
                self.bad_checksums += 1
                del buf[0]
                self.skipped_bytes += 1
                continue
            del buf[:length + 4]
            self.packets += 1
            self.served[body[2]] += 1
            return ident, body[2], body[3:]

    def _status(self, motor: _Motor, ident: int, params: bytes = b"") -> bytes:
        self.replies += 1
        return packet(ident, motor.error, params)

    def _serve(self, ident: int, instruction: int, params: bytes) -> bytes:
        if instruction in (SYNC_READ, SYNC_WRITE):
            return self._serve_sync(instruction, params) if ident == BROADCAST_ID else b""
        if ident == BROADCAST_ID:
            targets = [(i, m) for i, m in sorted(self._motors.items()) if m.online]
        else:
            motor = self._motors.get(ident)
            targets = [(ident, motor)] if motor is not None and motor.online else []
        out = bytearray()
        for i, motor in targets:
            if instruction == PING:
                out += self._status(motor, i)
            elif instruction == READ and len(params) == 2 and ident != BROADCAST_ID:
                addr, size = params
                out += self._status(motor, i, motor.regs[addr:addr + size].ljust(size, b"\0"))
            elif instruction == WRITE and len(params) >= 2:
                self._write(i, params[0], params[1:])
                if ident != BROADCAST_ID:
                    out += self._status(motor, i)
        return bytes(out)

    def _serve_sync(self, instruction: int, params: bytes) -> bytes:
        if len(params) < 2:
            return b""
        addr, size = params[0], params[1]
        if instruction == SYNC_READ:
            out = bytearray()
            for i in params[2:]:
                motor = self._motors.get(i)
                if motor is not None and motor.online:
                    out += self._status(motor, i, motor.regs[addr:addr + size].ljust(size, b"\0"))
            return bytes(out)
        chunk = 1 + size
        for k in range(2, len(params) - chunk + 1, chunk):
            i = params[k]
            motor = self._motors.get(i)
            if motor is not None and motor.online:
                self._write(i, addr, params[k + 1:k + chunk])
        return b""

    def _write(self, ident: int, addr: int, data: bytes) -> None:
        motor = self._motors[ident]
        for k, byte in enumerate(data):
            if addr + k < 256 and addr + k not in READ_ONLY:
                motor.regs[addr + k] = byte
        if addr <= ID < addr + len(data) and motor.regs[ID] != ident:
            if motor.regs[ID] in self._motors or motor.regs[ID] >= BROADCAST_ID:
                motor.regs[ID] = ident                                 # taken or invalid: refused
            else:
                self._motors[motor.regs[ID]] = self._motors.pop(ident)  # answers to its new id
        motor.publish(0.0)
