"""``CadenceError``: an input cadence refuses, reported as one line instead of a traceback.

Every loader of a file from elsewhere (checkpoint, export, dataset, network message) raises a
subclass naming the file (or peer) and what is wrong with it; ``cadence <cmd>`` prints
``cadence <cmd>: error: <message>`` and exits 1. Dependency-free so every package can use it.
"""
from __future__ import annotations

import os


class CadenceError(Exception):
    """Bad input from a file, a peer or a setting: the message names where and what."""


def located(path: str | os.PathLike | None, what: str) -> str:
    """``<path>: <what>`` (or ``what`` alone when there is no path)."""
    return f"{path}: {what}" if path is not None else what
