"""Waiting for a condition with a deadline, for tests of threads and processes: never
sleep-and-assert, which fails on a loaded machine."""
from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.005) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for(predicate, timeout_s: float = 5.0, poll_s: float = 0.002):
    """The first true value of ``predicate()``; an AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError("condition not reached in time")
