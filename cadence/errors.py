"""``CadenceError``: an input cadence refuses, reported as one line instead of a traceback.

Every loader of a file from elsewhere (checkpoint, export, dataset, network message) raises a
subclass naming the file (or peer) and what is wrong with it; ``cadence <cmd>`` prints
``cadence <cmd>: error: <message>`` and exits 1. Dependency-free so every package can use it.
"""
from __future__ import annotations


class CadenceError(Exception):
    """Bad input from a file, a peer or a setting: the message names where and what."""

