"""Clean stops on the signals a supervisor sends: SIGTERM (systemd, Docker, Slurm), SIGINT
(Ctrl-C) and SIGHUP (a closed terminal).

``stop_signals(on_stop)`` installs handlers for the duration of a ``with`` block (main thread
only) and restores the previous ones after; only the first signal calls ``on_stop``, so that a
second one cannot interrupt the clean-up the first started. ``on_stop(signum)`` decides what a stop means: set
an event a serving loop polls, or raise :class:`StopRequested` to unwind the main thread through
its ``finally`` blocks (which hold the robot and write the logs).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGINT", "SIGHUP")) if s is not None)


class StopRequested(BaseException):
    """A stop signal arrived. BaseException, like KeyboardInterrupt, so that ``except
    Exception`` clauses do not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def raise_stop(signum: int) -> None:
    raise StopRequested(signum)


@contextmanager
def stop_signals(on_stop: Callable[[int], None] = raise_stop) -> Iterator[None]:
    """Route SIGTERM / SIGINT / SIGHUP to ``on_stop(signum)`` inside the block. Outside the main
    thread (where Python cannot install handlers) the block runs with the handlers unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    fired = []

    def handler(signum, frame):
        if not fired:               # the first signal stops; later ones must not cut the clean-up short
            fired.append(signum)
            on_stop(signum)
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
