"""Key presses from the terminal, one reader shared by everyone who listens.

``cadence record`` reads two things from the same terminal: the episode decisions
(:mod:`cadence.hardware.record_keys`) and, with ``teleop=keyboard``, the teleop's motion keys.
Two readers of one file descriptor would each steal the other's bytes, so one
:class:`TerminalKeys` reads it and hands every key to every subscriber (:meth:`subscribe`).

While open, a terminal is in cbreak mode (keys arrive as they are pressed, without echo; Ctrl-C
still interrupts) and is put back as it was on close, also when the ``with`` body raises. A
descriptor that is not a terminal (CI, a pipe) is left alone, ``active`` is false and nothing
reads it, so a piped stdin is never consumed; ``force=True`` reads one anyway (tests use a pipe).

Key names: a printable ASCII character as itself (``"a"``, ``"Q"``, ``"?"``), ``"enter"``,
``"space"``, ``"tab"``, ``"backspace"``, ``"esc"``, ``"up"``, ``"down"``, ``"left"``, ``"right"``.
Other control bytes, other escape sequences and non-ASCII bytes are dropped.
"""
from __future__ import annotations

import atexit
import collections
import os
import queue
import select
import termios
import threading
import time
from typing import Optional

ESCAPE_S = 0.05          # a lone ESC: no '[' / 'O' after it within this long
POLL_S = 0.05            # the reader checks for close at least this often
QUEUE_KEYS = 1024        # a subscriber that never drains keeps only the newest keys

_ARROWS = {ord("A"): "up", ord("B"): "down", ord("C"): "right", ord("D"): "left"}
_SINGLE = {0x0D: "enter", 0x0A: "enter", 0x20: "space", 0x09: "tab", 0x7F: "backspace", 0x08: "backspace"}


class KeyQueue:
    """One subscriber's keys, oldest first (thread-safe; the reader thread fills it)."""

    def __init__(self, maxlen: int = QUEUE_KEYS):
        self._keys: collections.deque[str] = collections.deque(maxlen=maxlen)
        self._ready = threading.Condition()

    def put(self, key: str) -> None:
        with self._ready:
            self._keys.append(key)
            self._ready.notify_all()

    def get_nowait(self) -> str:
        """The oldest key; :class:`queue.Empty` when there is none."""
        with self._ready:
            if not self._keys:
                raise queue.Empty
            return self._keys.popleft()

    def get(self, timeout: Optional[float] = None) -> str:
        """The oldest key, waiting up to ``timeout`` seconds for one (:class:`queue.Empty` then)."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._keys, timeout):
                raise queue.Empty
            return self._keys.popleft()

    def drain(self) -> list[str]:
        """Every key pressed since the last drain, oldest first; never blocks."""
        with self._ready:
            keys = list(self._keys)
            self._keys.clear()
            return keys


class KeyDecoder:
    """Bytes to key names; keeps a partial escape sequence across reads.

    ``ESC [ A..D`` and ``ESC O A..D`` are the arrows (``ESC [ 1 ; 5 C`` with modifiers too); a
    lone ESC is reported by :meth:`flush` once the reader has waited :data:`ESCAPE_S` for the
    rest of a sequence. An ESC followed by anything else is ``"esc"`` and that byte on its own.
    """

    def __init__(self) -> None:
        self._state = "ground"          # ground | esc | csi | ss3
        self._csi_len = 0
        self._after_cr = False

    @property
    def pending(self) -> bool:
        """True while an escape sequence is incomplete (the caller times it out with flush)."""
        return self._state != "ground"

    def feed(self, data: bytes) -> list[str]:
        keys: list[str] = []
        for b in data:
            self._byte(b, keys)
        return keys

    def flush(self) -> list[str]:
        """End a pending sequence: a lone ESC is ``"esc"``; an incomplete ``ESC [`` is dropped."""
        keys = ["esc"] if self._state == "esc" else []
        self._state = "ground"
        return keys

    def _byte(self, b: int, keys: list[str]) -> None:
        state = self._state
        if state == "esc":
            if b == ord("["):
                self._state, self._csi_len = "csi", 0
                return
            if b == ord("O"):
                self._state = "ss3"
                return
            keys.append("esc")
            self._state = "ground"
            self._byte(b, keys)
            return
        if state == "csi":
            if 0x20 <= b <= 0x3F and self._csi_len < 16:       # parameters, intermediates
                self._csi_len += 1
                return
            self._state = "ground"
            if 0x40 <= b <= 0x7E:                               # the final byte
                if b in _ARROWS:
                    keys.append(_ARROWS[b])
                return
            self._byte(b, keys)                                 # malformed: start over at this byte
            return
        if state == "ss3":
            self._state = "ground"
            if b in _ARROWS:
                keys.append(_ARROWS[b])
            return
        after_cr, self._after_cr = self._after_cr, b == 0x0D
        if b == 0x1B:
            self._state = "esc"
        elif b == 0x0A and after_cr:                            # CR LF is one enter
            return
        elif b in _SINGLE:
            keys.append(_SINGLE[b])
        elif 0x21 <= b <= 0x7E:
            keys.append(chr(b))


class TerminalKeys:
    """The keys typed on ``fd`` (stdin by default), decoded on a daemon thread while open.

    ``active`` says whether anything will be read: ``fd`` is a terminal, or ``force`` is set.
    Use it as a context manager, or call :meth:`open` and :meth:`close` (both idempotent).
    """

    def __init__(self, fd: int = 0, *, force: bool = False, escape_s: float = ESCAPE_S):
        self.fd = fd
        self.is_tty = os.isatty(fd)
        self.active = self.is_tty or force
        self.escape_s = escape_s
        self._subscribers: list[KeyQueue] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._saved: Optional[list] = None          # the terminal's attributes before cbreak

    def subscribe(self) -> KeyQueue:
        """A new queue that receives every key decoded from now on."""
        q = KeyQueue()
        with self._lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: KeyQueue) -> None:
        with self._lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def open(self) -> "TerminalKeys":
        if not self.active or self._thread is not None:
            return self
        if self.is_tty:
            self._saved = termios.tcgetattr(self.fd)
            mode = termios.tcgetattr(self.fd)
            mode[3] &= ~(termios.ECHO | termios.ICANON)   # lflag: no line buffering, no echo
            mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self.fd, termios.TCSANOW, mode)
            atexit.register(self.close)                 # a process that never reaches close
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, name=f"terminal-keys-{self.fd}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=1.0)
        saved, self._saved = self._saved, None
        if saved is not None:
            atexit.unregister(self.close)
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, saved)
            except (termios.error, OSError):
                pass                                    # the terminal went away: nothing to restore

    def __enter__(self) -> "TerminalKeys":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _publish(self, keys: list[str]) -> None:
        if not keys:
            return
        with self._lock:
            subscribers = list(self._subscribers)
        for key in keys:
            for q in subscribers:
                q.put(key)

    def _read(self) -> None:
        decoder, deadline = KeyDecoder(), 0.0
        while not self._stop.is_set():
            timeout = min(POLL_S, max(0.0, deadline - time.monotonic())) if decoder.pending else POLL_S
            try:
                ready, _, _ = select.select([self.fd], [], [], timeout)
                data = os.read(self.fd, 1024) if ready else None
            except BlockingIOError:                     # a non-blocking descriptor raced us
                continue
            except (OSError, ValueError):               # closed or hung up
                break
            if data is None:
                if decoder.pending and time.monotonic() >= deadline:
                    self._publish(decoder.flush())
                continue
            if not data:                                # end of file (a pipe's writer closed)
                break
            self._publish(decoder.feed(data))
            if decoder.pending:
                deadline = time.monotonic() + self.escape_s
        self._publish(decoder.flush())
