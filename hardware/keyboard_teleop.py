"""``teleop=keyboard``: a position-controlled robot moved one step per key press.

For arms and gantries without a leader device: the command starts each episode at the
measured position and each press moves one action element by ``speed`` percent of that
element's range (``speed=0.5``: 200 presses from one limit to the other; holding a key repeats
it at the terminal's rate). Slow, but needs nothing but the terminal ``cadence record`` runs in.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from cadence.hardware.robot import Observation, RobotError, RobotSpec
from cadence.hardware.teleop_target import PositionTarget
from cadence.hardware.terminal_keys import KeyQueue, TerminalKeys

# (increase, decrease) keys of action elements 0, 1, 2, ...: two rows of the keyboard
KEY_PAIRS = (("w", "s"), ("a", "d"), ("r", "f"), ("t", "g"), ("y", "h"), ("u", "j"))


class KeyboardTeleop:
    """A :class:`~cadence.hardware.teleop.Teleop` that steps a position target with keys.

    Keys (either case): ``w``/``s`` action element 0 up/down, ``a``/``d`` element 1, ``r``/``f``
    element 2, ``t``/``g`` element 3, ``y``/``h`` element 4, ``u``/``j`` element 5; elements
    beyond the sixth are held where they start. (For a planar x-y robot, x forward and y left:
    ``w`` forward, ``s`` back, ``a`` left, ``d`` right.) A press moves its element by
    ``speed * (high - low) / 100``, clipped to the action limits.

    The target starts at each :meth:`reset` from the measured position (``position=[key, start,
    stop]`` of ``observation.values``; default the one observation shaped like the action) and
    presses made between episodes are dropped. :meth:`action` returns the target every tick
    after reset, so the robot holds where the keys left it.

    ``keys`` is the terminal reader shared with the record keys; without one the teleop reads
    stdin itself, and stdin must then be a terminal.
    """

    def __init__(self, speed: float = 0.5, position: Optional[Sequence] = None,
                 keys: Optional[TerminalKeys] = None):
        if not float(speed) > 0:
            raise RobotError(f"teleop=keyboard: speed must be > 0 (percent of the range per press), got {speed}")
        self.speed = float(speed)
        self.position = position
        self._keys = keys
        self._owns_keys = keys is None
        self._queue: Optional[KeyQueue] = None
        self._target: Optional[PositionTarget] = None
        self._step: Optional[np.ndarray] = None
        self._moves: dict[str, tuple[int, float]] = {}

    def connect(self, spec: RobotSpec) -> None:
        target = PositionTarget(spec, self.position, "teleop=keyboard")
        keys = self._keys if self._keys is not None else TerminalKeys(0)
        if not keys.active:
            raise RobotError("teleop=keyboard reads key presses from a terminal, and stdin is not one "
                             "(run cadence record in a terminal, not through a pipe)")
        self._target, self._keys = target, keys
        self._step = self.speed * target.range / 100.0
        n = target.low.size
        self._moves = {}
        for i, (up, down) in enumerate(KEY_PAIRS[:n]):
            for key, sign in ((up, 1.0), (down, -1.0)):
                self._moves[key] = self._moves[key.upper()] = (i, sign)
        self._queue = keys.subscribe()
        if self._owns_keys:
            keys.open()

    def reset(self, observation: Observation) -> None:
        self._require().reset(observation)
        self._queue.drain()                     # presses between episodes do not carry over

    def action(self, observation: Observation) -> Optional[np.ndarray]:
        """The target after the presses since the last call; ``None`` before the first reset."""
        target = self._require()
        delta = np.zeros_like(target.low)
        for key in self._queue.drain():
            move = self._moves.get(key)
            if move is not None:
                i, sign = move
                delta[i] = sign * self._step[i]
                target.move(delta)              # clip after each press, as a person sees it
                delta[i] = 0.0
        return target.command()

    def disconnect(self) -> None:
        if self._queue is not None and self._keys is not None:
            self._keys.unsubscribe(self._queue)
        self._queue = None
        if self._owns_keys and self._keys is not None:
            self._keys.close()
            self._keys = None

    def _require(self) -> PositionTarget:
        if self._target is None or self._queue is None:
            raise RobotError("teleop=keyboard: not connected")
        return self._target
