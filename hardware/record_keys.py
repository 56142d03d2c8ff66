"""The episode decisions of ``cadence record``, from the keys a person presses.

The keys follow LeRobot's ``record`` (right arrow: end the episode and save it; left arrow:
re-record it; Esc: stop recording), plus ``x`` to discard an episode and move on, and Enter and
``q`` as easier-to-find aliases of right arrow and Esc. Decisions are the names
:func:`cadence.hardware.recorder.record_episode` ends an episode on.
"""
from __future__ import annotations

from cadence.hardware.terminal_keys import TerminalKeys

DECISION_OF_KEY = {
    "right": "keep", "enter": "keep",        # end the episode now and save it
    "left": "rerecord",                      # drop it and record it again
    "x": "discard", "X": "discard",          # drop it and go on to the next one
    "esc": "stop", "q": "stop", "Q": "stop",  # end the episode, save it, stop recording
}

HELP = "keys: right arrow/Enter = save episode now, left arrow = re-record, x = discard, Esc/q = save and stop"


class RecordKeys:
    """The decisions pressed since the last :meth:`poll`, in order."""

    HELP = HELP

    def __init__(self, keys: TerminalKeys):
        self._queue = keys.subscribe()

    def poll(self) -> list[str]:
        """``"keep"``, ``"rerecord"``, ``"discard"`` or ``"stop"`` per decision key; never blocks."""
        return [DECISION_OF_KEY[k] for k in self._queue.drain() if k in DECISION_OF_KEY]
