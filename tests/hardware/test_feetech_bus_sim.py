"""FeetechBus against the bus simulator: a real pty, the real vendor SDK and pyserial."""
from __future__ import annotations

import threading
import time

import pytest
import serial

from cadence.hardware import feetech_bus_sim as fsim
from cadence.hardware.feetech_bus import FeetechBus, describe_error
from cadence.hardware.feetech_bus_sim import FeetechBusSim, packet
from cadence.hardware.robot import RobotError

from .waiting import wait_until

IDS = [1, 2, 3, 4, 5, 6]
# The simulator is a thread of this process: on a loaded machine it can be descheduled for
# hundreds of ms, so answers get a generous timeout; only where a motor is really absent
# (the test waits out the timeout) a short one.
TIMEOUT_MS = 2000
ABSENT_TIMEOUT_MS = 500


@pytest.fixture
def sim():
    with FeetechBusSim() as s:
        yield s
    assert s.error is None, s.error


@pytest.fixture
def bus(sim):
    with FeetechBus(sim.port, timeout_ms=TIMEOUT_MS, label="SO-101") as b:
        yield b


def test_ping_read_write(bus, sim):
    assert [bus.ping(i) for i in IDS] == [777] * 6
    assert bus.read("Present_Position", 3) == 2048
    bus.write("P_Coefficient", 3, 16)
    assert bus.read("P_Coefficient", 3) == 16
    assert sim.register(3, fsim.P_COEFFICIENT) == 16
    bus.write("Goal_Position", 2, 3000)
    assert sim.register(2, fsim.GOAL_POSITION, 2) == 3000
    assert sim.served[fsim.PING] == 6 and sim.served[fsim.WRITE] == 2


def test_signed_register_and_homing_offset(bus, sim):
    bus.write("Homing_Offset", 1, -300)
    assert sim.register(1, fsim.HOMING_OFFSET, 2) == 300 | 0x800      # sign-magnitude, sign bit 11
    assert bus.read("Homing_Offset", 1) == -300
    assert bus.read("Present_Position", 1) == 2048 + 300               # present = physical - offset
    with pytest.raises(RobotError, match="does not fit Homing_Offset"):
        bus.write("Homing_Offset", 1, 5000)


def test_sync_read_sync_write_and_the_motor_model(bus, sim):
    assert bus.sync_read("Present_Position", IDS) == {i: 2048 for i in IDS}
    replies = sim.replies
    bus.sync_write("Goal_Position", {i: 2048 + 100 * i for i in IDS})
    assert wait_until(lambda: sim.served[fsim.SYNC_WRITE] == 1)
    assert sim.replies == replies                                      # nobody answers a sync write
    time.sleep(0.1)
    assert sim.position(1) == 2048                                     # torque off: it stays
    bus.set_torque(IDS, True)
    assert bus.sync_read("Torque_Enable", IDS) == {i: 1 for i in IDS}
    assert bus.sync_read("Lock", IDS) == {i: 1 for i in IDS}
    assert wait_until(lambda: bus.sync_read("Present_Position", IDS) == {i: 2048 + 100 * i for i in IDS})
    assert bus.sync_read("Moving", IDS) == {i: 0 for i in IDS}
    # a small move settles within ~100 ms (generous bound for a loaded machine)
    t0 = time.monotonic()
    bus.sync_write("Goal_Position", {1: 2200})
    assert wait_until(lambda: bus.read("Present_Position", 1) == 2200, timeout=2.0)
    assert time.monotonic() - t0 < 3.0
    # a person moving a motor with torque off
    bus.set_torque([2], False)
    sim.set_position(2, 1000)
    assert bus.read("Present_Position", 2) == 1000
    # the position limits clamp the goal, as on the servo
    bus.set_torque([3], False)
    bus.write("Max_Position_Limit", 3, 2500)
    bus.set_torque([3], True)
    bus.write("Goal_Position", 3, 4000)
    assert wait_until(lambda: bus.read("Present_Position", 3) == 2500)


def test_bad_checksum_gets_no_reply_and_garbage_resyncs(sim):
    with serial.Serial(sim.port, 1_000_000, timeout=0.3) as s:
        ping = bytearray(packet(1, fsim.PING))
        ping[-1] ^= 0xFF
        s.write(bytes(ping))
        assert s.read(6) == b""                                        # no answer, as real servos
        assert sim.bad_checksums == 1
        s.write(b"\x00\x13\xff\x42" + packet(2, fsim.PING) + b"\xff")   # garbage around a good packet
        assert s.read(6) == packet(2, 0)
        s.write(packet(4, fsim.READ, [fsim.PRESENT_POSITION, 2]))       # the trailing 0xFF did not hurt
        assert s.read(8) == packet(4, 0, (2048).to_bytes(2, "little"))
        s.write(b"\xff\xff\x05\xf0\x01")                               # a header whose packet never completes
        time.sleep(0.05)
        s.write(packet(5, fsim.PING))
        assert s.read(6) == packet(5, 0)
    assert sim.skipped_bytes > 0


def test_missing_motor_is_a_one_line_error(bus, sim):
    bus.timeout_ms = ABSENT_TIMEOUT_MS
    with pytest.raises(RobotError) as e:
        bus.read("Present_Position", 9)
    assert str(e.value) == (f"SO-101 on {sim.port}: motor 9 did not answer reading Present_Position "
                            "(is the arm powered?)")
    with pytest.raises(RobotError, match=r"motor 8 did not answer a ping"):
        bus.ping(8)
    sim.set_online(3, False)
    with pytest.raises(RobotError) as e:
        bus.sync_read("Present_Position", [3, 1, 2, 4, 5, 6])
    assert "motor 3 did not answer sync-reading Present_Position" in str(e.value)
    assert "\n" not in str(e.value)
    sim.set_online(3, True)
    bus.timeout_ms = TIMEOUT_MS
    assert bus.sync_read("Present_Position", IDS)[3] == 2048           # no stale bytes confuse the next read


def test_status_error_byte_is_kept_not_raised(bus, sim):
    sim.set_error(6, 0x20)
    assert bus.read("Present_Position", 6) == 2048
    assert bus.errors == {6: 0x20} and describe_error(0x20) == "overload"
    sim.set_error(6, 0)
    bus.sync_read("Present_Position", IDS)
    assert bus.errors == {}


def test_id_change_and_broadcast_write(bus, sim):
    bus.write("ID", 6, 7)
    assert bus.ping(7) == 777 and sim.ids == [1, 2, 3, 4, 5, 7]
    bus.timeout_ms = ABSENT_TIMEOUT_MS
    with pytest.raises(RobotError, match="motor 6 did not answer"):
        bus.ping(6)
    with serial.Serial(sim.port, 1_000_000, timeout=0.1) as s:
        s.write(packet(fsim.BROADCAST_ID, fsim.WRITE, [fsim.ACCELERATION, 99]))
        assert s.read(1) == b""
    assert all(sim.register(i, fsim.ACCELERATION) == 99 for i in sim.ids)


def test_bus_is_thread_safe(bus, sim):
    errors: list[BaseException] = []

    def hammer(fn):
        try:
            for _ in range(60):
                fn()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(lambda: bus.sync_read("Present_Position", IDS),)),
               threading.Thread(target=hammer, args=(lambda: bus.read("Present_Temperature", 2),)),
               threading.Thread(target=hammer, args=(lambda: bus.sync_write("Goal_Position", {1: 2048}),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_port_errors(sim):
    with pytest.raises(RobotError, match=r"^SO-101 on /dev/nonexistent-tty: cannot open the serial port"):
        FeetechBus("/dev/nonexistent-tty", label="SO-101").open()
    bus = FeetechBus(sim.port)
    with pytest.raises(RobotError, match="the port is not open"):
        bus.read("Present_Position", 1)
    with pytest.raises(ValueError, match="unknown register"):
        bus.read("Present_Positoin", 1)
    bus.open()
    bus.close()
    bus.close()   # idempotent
