"""One Feetech servo bus (STS3215 and kin, protocol 0) over the vendor SDK, with one-line errors.

:class:`FeetechBus` is a thin, thread-safe wrapper around ``scservo_sdk`` (``PortHandler``,
``PacketHandler(0)``, ``GroupSyncRead``, ``GroupSyncWrite``): registers by name
(:data:`STS3215_REGISTERS`), signed registers decoded (sign-magnitude, :data:`SIGN_BITS`), and
every failure a :class:`~cadence.hardware.robot.RobotError` naming the port, the motor and the
register. What the SDK gets wrong for us, fixed here rather than patched in place:

* its reply timeout is fixed (``setPacketTimeout``: twice a 16 ms USB latency timer plus 2 ms,
  plus transmission time), and every transaction overwrites a timeout set with
  ``setPacketTimeoutMillis``; ours is the transmission time plus ``timeout_ms``;
* it polls the port with a zero timeout, spinning a core (and, in one process with a
  simulator, starving it of the GIL); ours blocks up to 1 ms per read;
* it times packets with the wall clock; ours uses the monotonic one;
* an exception inside a transaction (an unplugged adapter) leaves its port marked busy
  forever; ours clears it;
* stale bytes (a late answer after a timeout) stay in the input and can be taken for the next
  answer; ours drops them before each transaction;
* a sync read that fails does not say which motor failed; ours reads the answers one by one.

A servo's error byte (overload, overheating, ...) is not a communication failure (the data is
valid, and a gripper holding an object sets the overload bit): it is kept in :attr:`errors`
and logged when it changes.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Mapping, TypeVar

import scservo_sdk as scs
import serial

from cadence.hardware.robot import RobotError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: name -> (address, bytes): the STS3215 control table (the registers a driver needs).
STS3215_REGISTERS: dict[str, tuple[int, int]] = {
    "Model_Number": (3, 2),
    "ID": (5, 1),
    "Baud_Rate": (6, 1),
    "Return_Delay_Time": (7, 1),
    "Min_Position_Limit": (9, 2),
    "Max_Position_Limit": (11, 2),
    "Max_Torque_Limit": (16, 2),
    "P_Coefficient": (21, 1),
    "D_Coefficient": (22, 1),
    "I_Coefficient": (23, 1),
    "Protection_Current": (28, 2),
    "Homing_Offset": (31, 2),
    "Operating_Mode": (33, 1),
    "Overload_Torque": (36, 1),
    "Torque_Enable": (40, 1),
    "Acceleration": (41, 1),
    "Goal_Position": (42, 2),
    "Goal_Time": (44, 2),
    "Goal_Velocity": (46, 2),
    "Torque_Limit": (48, 2),
    "Lock": (55, 1),
    "Present_Position": (56, 2),
    "Present_Velocity": (58, 2),
    "Present_Load": (60, 2),
    "Present_Voltage": (62, 1),
    "Present_Temperature": (63, 1),
    "Status": (65, 1),
    "Moving": (66, 1),
    "Present_Current": (69, 2),
    "Maximum_Acceleration": (85, 1),
}
#: registers stored sign-magnitude: name -> sign bit
SIGN_BITS: dict[str, int] = {"Homing_Offset": 11, "Goal_Velocity": 15, "Present_Velocity": 15}
STS3215_MODEL = 777
_ERROR_BITS = ((0x01, "input voltage"), (0x02, "angle sensor"), (0x04, "overheating"),
               (0x08, "overcurrent"), (0x20, "overload"))


def encode_sign_magnitude(value: int, bit: int) -> int:
    """``value`` as sign-magnitude with the sign at ``bit``; raises ValueError out of range."""
    if abs(value) >= 1 << bit:
        raise ValueError(f"{value} does not fit a sign-magnitude register with sign bit {bit}")
    return (-value | (1 << bit)) if value < 0 else value


def decode_sign_magnitude(raw: int, bit: int) -> int:
    return -(raw & ~(1 << bit)) if raw & (1 << bit) else raw


def describe_error(error: int) -> str:
    """A servo's status error byte in words ("overload, overheating")."""
    words = [word for flag, word in _ERROR_BITS if error & flag]
    return ", ".join(words) or f"error 0x{error:02x}"


class _PortHandler(scs.PortHandler):
    """The SDK's port with a configurable reply timeout, a blocking read and a monotonic clock."""

    def __init__(self, port_name: str, timeout_ms: float):
        super().__init__(port_name)
        self.timeout_ms = float(timeout_ms)

    def setPacketTimeout(self, packet_length):  # noqa: N802  (the SDK's name)
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * packet_length + self.timeout_ms

    def getCurrentTime(self):  # noqa: N802
        return time.monotonic() * 1000.0

    def setupPort(self, cflag_baud):  # noqa: N802
        ok = super().setupPort(cflag_baud)
        self.ser.timeout = 0.001          # a read waits up to 1 ms for its bytes instead of spinning
        self.ser.write_timeout = 1.0      # never block forever on a wedged adapter
        return ok


class FeetechBus:
    """Servos on one serial port. ``label`` starts every error message ("SO-101")."""

    def __init__(self, port: str, baudrate: int = 1_000_000, timeout_ms: float = 50.0,
                 label: str = "Feetech bus", retries: int = 0):
        self.port, self.baudrate = str(port), int(baudrate)
        self._timeout_ms = float(timeout_ms)
        self.label, self.retries = label, int(retries)
        self.errors: dict[int, int] = {}      # motor id -> newest non-zero status error byte
        self._lock = threading.RLock()
        self._port: _PortHandler | None = None
        self._ph = None

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def timeout_ms(self) -> float:
        """How long to wait for an answer beyond its transmission time (may change any time)."""
        return self._timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, value: float) -> None:
        with self._lock:
            self._timeout_ms = float(value)
            if self._port is not None:
                self._port.timeout_ms = self._timeout_ms

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        with self._lock:
            if self._port is not None:
                return
            port = _PortHandler(self.port, self.timeout_ms)
            port.baudrate = self.baudrate
            try:
                ok = port.openPort()
            except (serial.SerialException, OSError, ValueError) as e:
                raise RobotError(f"{self._where}: cannot open the serial port: {_one_line(e)} "
                                 "(is the arm plugged in, the port right, and no other program using it?)") from e
            if not ok:
                raise RobotError(f"{self._where}: baud rate {self.baudrate} is not one the servos support")
            self._port, self._ph = port, scs.PacketHandler(0)

    def close(self) -> None:
        with self._lock:
            port, self._port, self._ph = self._port, None, None
            if port is not None and port.ser is not None:
                try:
                    port.closePort()
                except (serial.SerialException, OSError) as e:
                    log.warning("%s: closing the port failed: %s", self._where, _one_line(e))

    def __enter__(self) -> "FeetechBus":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- transactions ------------------------------------------------------------------
    def ping(self, ident: int) -> int:
        """The model number of motor ``ident`` (777 for an STS3215)."""
        def call():
            return self._ph.ping(self._port, ident)
        return self._transact(call, ident, "a ping")

    def read(self, name: str, ident: int) -> int:
        """Register ``name`` of motor ``ident`` (signed registers decoded)."""
        addr, size = _register(name)

        def call():
            data, comm, error = self._ph.readTxRx(self._port, ident, addr, size)
            return (_decode(name, data, size) if comm == scs.COMM_SUCCESS else 0), comm, error
        return self._transact(call, ident, f"reading {name}")

    def write(self, name: str, ident: int, value: int) -> None:
        """Write register ``name`` of motor ``ident`` and wait for its acknowledgement."""
        addr, size = _register(name)
        data = self._encode(name, ident, value, size)

        def call():
            comm, error = self._ph.writeTxRx(self._port, ident, addr, size, data)
            return None, comm, error
        self._transact(call, ident, f"writing {name}")

    def sync_read(self, name: str, ids: Iterable[int]) -> dict[int, int]:
        """Register ``name`` of every motor in ``ids`` with one request (answers in id order)."""
        addr, size = _register(name)
        ids = [int(i) for i in ids]
        doing = f"sync-reading {name}"
        if not ids:
            return {}
        with self._lock:
            port, ph = self._require_open(doing)
            group = scs.GroupSyncRead(port, ph, addr, size)
            for i in ids:
                group.addParam(i)
            values: dict[int, int] = {}
            try:
                self._drop_stale_input()
                comm = group.txPacket()
                if comm != scs.COMM_SUCCESS:
                    self._fail(comm, ids[0] if ids else -1, doing)
                for i in ids:   # the SDK's rxPacket stops at a failure without saying whose
                    data, comm, error = ph.readRx(port, i, size)
                    if comm != scs.COMM_SUCCESS:
                        self._fail(comm, i, doing)
                    self._note_error(i, error, doing)
                    values[i] = _decode(name, data, size)
            except (serial.SerialException, OSError) as e:
                raise RobotError(f"{self._where}: the serial port failed {doing}: {_one_line(e)}") from e
            finally:
                port.is_using = False
            return values

    def sync_write(self, name: str, values: Mapping[int, int]) -> None:
        """Register ``name`` of several motors with one packet (servos do not acknowledge it)."""
        addr, size = _register(name)
        doing = f"sync-writing {name}"
        if not values:
            return
        with self._lock:
            port, ph = self._require_open(doing)
            group = scs.GroupSyncWrite(port, ph, addr, size)
            for i, v in values.items():
                group.addParam(int(i), self._encode(name, int(i), v, size))
            try:
                comm = group.txPacket()
            except (serial.SerialException, OSError) as e:
                raise RobotError(f"{self._where}: the serial port failed {doing}: {_one_line(e)}") from e
            finally:
                port.is_using = False
            if comm != scs.COMM_SUCCESS:
                self._fail(comm, next(iter(values), -1), doing)

    def set_torque(self, ids: Iterable[int], enabled: bool, confirm: bool = True) -> None:
        """Torque on or off on ``ids`` at once (one packet), with the EEPROM lock following it
        (unlocked while torque is off, so calibration can be written), as LeRobot does. With
        ``confirm`` the motors' Torque_Enable is read back (a sync write is not acknowledged):
        when this returns, every motor has it."""
        ids = [int(i) for i in ids]
        value = int(bool(enabled))
        with self._lock:
            self.sync_write("Torque_Enable", {i: value for i in ids})
            self.sync_write("Lock", {i: value for i in ids})
            if confirm:
                state = self.sync_read("Torque_Enable", ids)
                wrong = [i for i in ids if state[i] != value]
                if wrong:
                    raise RobotError(f"{self._where}: motor {wrong[0]} did not turn torque "
                                     f"{'on' if value else 'off'}")

    # --- internals ---------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.label} on {self.port}"

    def _require_open(self, doing: str):
        if self._port is None:
            raise RobotError(f"{self._where}: the port is not open ({doing})")
        return self._port, self._ph

    def _drop_stale_input(self) -> None:
        if self._port.ser.in_waiting:
            self._port.ser.reset_input_buffer()

    def _transact(self, call: Callable[[], tuple[T, int, int]], ident: int, doing: str) -> T:
        with self._lock:
            port, _ = self._require_open(doing)
            for attempt in range(self.retries + 1):
                try:
                    self._drop_stale_input()
                    value, comm, error = call()
                except (serial.SerialException, OSError) as e:
                    raise RobotError(f"{self._where}: the serial port failed {doing}: {_one_line(e)}") from e
                finally:
                    port.is_using = False
                if comm == scs.COMM_SUCCESS:
                    self._note_error(ident, error, doing)
                    return value
                if attempt == self.retries:
                    self._fail(comm, ident, doing)
            raise AssertionError("unreachable")

    def _fail(self, comm: int, ident: int, doing: str) -> None:
        if comm == scs.COMM_RX_TIMEOUT:
            why = f"did not answer {doing} (is the arm powered?)"
        elif comm == scs.COMM_RX_CORRUPT:
            why = f"sent a corrupt answer {doing} (loose cable, wrong baud rate, or two motors with one id?)"
        elif comm in (scs.COMM_TX_FAIL, scs.COMM_TX_ERROR):
            why = f"could not be sent {doing} (serial write failed)"
        else:
            why = f"failed {doing}: {self._ph.getTxRxResult(comm) if self._ph else comm}"
        raise RobotError(f"{self._where}: motor {ident} {why}")

    def _note_error(self, ident: int, error: int, doing: str) -> None:
        if error and self.errors.get(ident) != error:
            log.warning("%s: motor %d reports %s (%s)", self._where, ident, describe_error(error), doing)
        if error:
            self.errors[ident] = error
        else:
            self.errors.pop(ident, None)

    def _encode(self, name: str, ident: int, value: int, size: int) -> list[int]:
        try:
            raw = int(value)
            if name in SIGN_BITS:
                raw = encode_sign_magnitude(raw, SIGN_BITS[name])
            return list(raw.to_bytes(size, "little"))
        except (ValueError, OverflowError, TypeError) as e:
            raise RobotError(f"{self._where}: motor {ident}: {value!r} does not fit {name} "
                             f"({size} byte{'s' if size > 1 else ''})") from e


def _register(name: str) -> tuple[int, int]:
    try:
        return STS3215_REGISTERS[name]
    except KeyError:
        raise ValueError(f"unknown register {name!r}; known: {', '.join(STS3215_REGISTERS)}") from None


def _decode(name: str, data, size: int) -> int:
    raw = int.from_bytes(bytes(data[:size]), "little")
    return decode_sign_magnitude(raw, SIGN_BITS[name]) if name in SIGN_BITS else raw


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
