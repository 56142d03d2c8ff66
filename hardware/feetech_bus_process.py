"""A simulated Feetech bus in its own process, for end-to-end runs of the commands that open a
serial port (``cadence robot check``, ``record``, ``run`` with ``robot=so101``)::

    python -m cadence.hardware.feetech_bus_process [--wave PERIOD_S]

prints ``port <path>`` once the pty is open and serves until SIGTERM / SIGINT. ``--wave`` moves
every motor by hand along a slow sine (a person moving a leader arm with its torque off), each
joint with its own phase, within the middle of its range.
"""
from __future__ import annotations

import argparse
import math
import signal
import threading
import time

from cadence.hardware.feetech_bus_sim import FeetechBusSim

CENTRE, AMPLITUDE = 2048, 600          # raw steps: inside default_calibration's 500..3596


def wave(sim: FeetechBusSim, period_s: float, stop: threading.Event, rate_hz: float = 100.0) -> None:
    t0 = time.monotonic()
    while not stop.wait(1.0 / rate_hz):
        phase = 2 * math.pi * (time.monotonic() - t0) / period_s
        for k, ident in enumerate(sim.ids):
            sim.set_position(ident, int(CENTRE + AMPLITUDE * math.sin(phase + 0.9 * k)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wave", type=float, default=None, metavar="PERIOD_S",
                        help="move the motors by hand along a sine of this period")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    with FeetechBusSim() as sim:
        print(f"port {sim.port}", flush=True)
        if args.wave:
            threading.Thread(target=wave, args=(sim, args.wave, stop), daemon=True).start()
        stop.wait()


if __name__ == "__main__":
    main()
