"""The terminal key reader and the record keys on real pseudo-terminals and pipes: key names from
the bytes a terminal sends, every subscriber sees every key, the terminal's mode comes back on
close (also after an exception), and a pipe is never read unless forced."""
import os
import queue
import termios
import time

import pytest

from cadence.hardware.record_keys import HELP, RecordKeys
from cadence.hardware.terminal_keys import KeyDecoder, TerminalKeys

WAIT_S = 5.0


def _take(q, n, timeout=WAIT_S):
    """The next ``n`` keys from ``q``, waiting up to ``timeout`` for them."""
    deadline, keys = time.monotonic() + timeout, []
    while len(keys) < n:
        try:
            keys.append(q.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            break
    return keys


def _poll_until(poll, n, timeout=WAIT_S):
    deadline, got = time.monotonic() + timeout, []
    while len(got) < n and time.monotonic() < deadline:
        got += poll()
        time.sleep(0.01)
    return got


@pytest.fixture
def pty():
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_pty_bytes_become_key_names(pty):
    master, slave = pty
    with TerminalKeys(slave) as keys:
        assert keys.active and keys.running
        q = keys.subscribe()
        for chunk in (b"\x1b[C", b"\x1b[D", b"x", b"\x1b", b"q", b"w", b"\x1bOA", b"\x1b[B", b"\r", b" ", b"\x7f"):
            os.write(master, chunk)
        got = _take(q, 11)
    assert got == ["right", "left", "x", "esc", "q", "w", "up", "down", "enter", "space", "backspace"]


def test_a_lone_escape_is_reported_after_the_timeout(pty):
    master, slave = pty
    with TerminalKeys(slave) as keys:
        q = keys.subscribe()
        os.write(master, b"\x1b")
        assert _take(q, 1) == ["esc"]         # nothing follows it: reported on its own


def test_two_subscribers_each_see_every_key(pty):
    master, slave = pty
    with TerminalKeys(slave) as keys:
        a, b = keys.subscribe(), keys.subscribe()
        os.write(master, b"ws\x1b[A")
        assert _take(a, 3) == ["w", "s", "up"]
        assert _take(b, 3) == ["w", "s", "up"]
        keys.unsubscribe(b)
        os.write(master, b"d")
        assert _take(a, 1) == ["d"]
        assert b.drain() == []


def test_record_keys_decisions(pty):
    master, slave = pty
    with TerminalKeys(slave) as keys:
        decide = RecordKeys(keys)
        for chunk in (b"\x1b[C", b"\x1b[D", b"x", b"\x1b", b"q", b"w", b"\n"):
            os.write(master, chunk)
        got = _poll_until(decide.poll, 6)
    assert got == ["keep", "rerecord", "discard", "stop", "stop", "keep"]   # "w" is no decision
    assert decide.HELP == HELP and "\n" not in HELP
    assert all(word in HELP for word in ("right arrow", "left arrow", "x", "Esc"))


def test_cbreak_while_open_and_restored_on_close(pty):
    master, slave = pty
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON and before[3] & termios.ECHO
    keys = TerminalKeys(slave).open()
    during = termios.tcgetattr(slave)
    assert not during[3] & termios.ICANON and not during[3] & termios.ECHO
    t0 = time.monotonic()
    keys.close()
    assert time.monotonic() - t0 < 1.0          # the reader notices close within its poll period
    assert not keys.running
    assert termios.tcgetattr(slave) == before
    keys.close()                                # idempotent


def test_terminal_restored_when_the_body_raises(pty):
    master, slave = pty
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError):
        with TerminalKeys(slave):
            assert termios.tcgetattr(slave) != before
            raise RuntimeError("boom")
    assert termios.tcgetattr(slave) == before


def test_a_pipe_is_left_alone_unless_forced():
    r, w = os.pipe()
    try:
        keys = TerminalKeys(r)
        assert not keys.active
        with keys:
            q = keys.subscribe()
            assert not keys.running
            os.write(w, b"abc")
            time.sleep(0.1)
            assert q.drain() == []
        assert os.read(r, 10) == b"abc"         # still there for whoever reads the pipe
    finally:
        os.close(r)
        os.close(w)


def test_a_forced_pipe_is_read_and_its_end_stops_the_reader():
    r, w = os.pipe()
    try:
        with TerminalKeys(r, force=True) as keys:
            assert keys.active and not keys.is_tty
            q = keys.subscribe()
            os.write(w, b"a\x1b[Dz")
            assert _take(q, 3) == ["a", "left", "z"]
            os.write(w, b"\x1b")
            os.close(w)
            w = None
            assert _take(q, 1) == ["esc"]       # end of file flushes a pending escape
            deadline = time.monotonic() + WAIT_S
            while keys.running and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not keys.running
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


@pytest.mark.parametrize("chunks, expected", [
    ([b"\x1b[C"], ["right"]),
    ([b"\x1b", b"[", b"C"], ["right"]),                # split across reads
    ([b"\x1bOD"], ["left"]),
    ([b"\x1b[1;5A"], ["up"]),                          # with a modifier
    ([b"\x1b[3~"], []),                                # delete: not a key we name
    ([b"\x1bq"], ["esc", "q"]),
    ([b"\x1b\x1b[B"], ["esc", "down"]),
    ([b"\r\n", b"\n"], ["enter", "enter"]),
    ([b"A\t\x08\x01\xc3\xa9"], ["A", "tab", "backspace"]),
])
def test_decoder(chunks, expected):
    decoder = KeyDecoder()
    got = [k for chunk in chunks for k in decoder.feed(chunk)]
    assert got + decoder.flush() == expected
    assert not decoder.pending


def test_decoder_holds_a_lone_escape_until_flushed():
    decoder = KeyDecoder()
    assert decoder.feed(b"\x1b") == [] and decoder.pending
    assert decoder.flush() == ["esc"]
    assert decoder.feed(b"\x1b[") == [] and decoder.flush() == []   # an incomplete sequence is dropped
