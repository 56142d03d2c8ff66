"""A real RobotServer attacked over real ZeroMQ TCP sockets: unauthenticated and oversized
messages, replayed, reordered and expired commands, short tokens; and a real
``cadence robot serve`` process stopped by SIGTERM / SIGHUP."""
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from omegaconf import OmegaConf

import cadence.hardware.robot_server as robot_server
from cadence.hardware.remote_robot import RemoteRobot
from cadence.hardware.robot import RobotError
from cadence.hardware.robot_server import RobotServer
from cadence.hardware.wire import MAX_REQUEST_HEADER_BYTES, encode
from cadence.hardware.wire_keys import connect_curve, curve_keys

from .test_remote_robot import RATE_HZ, TASK, TOKEN, RawPeer, ServerProcess, _Recording

WRONG = "wrong-token-but-long-enough"


@pytest.fixture
def served(monkeypatch):
    """A RobotServer on a thread of this process, with a counter of array decodes."""
    from cadence.hardware.sim_robot import SimRobot

    decodes = []
    real_decode_payload = robot_server.decode_payload

    def counting(head):
        decodes.append(head.kind)
        return real_decode_payload(head)

    monkeypatch.setattr(robot_server, "decode_payload", counting)
    robot = _Recording(SimRobot(TASK, rate_hz=RATE_HZ))
    server = RobotServer(robot, TOKEN, "tcp://127.0.0.1:*")
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield server, robot, decodes
    server.close()
    thread.join(5)


def _act(msg_id, **fields):
    """An act with the right token; ``expires`` one second ahead unless given (``None``: left out)."""
    fields = {k: v for k, v in {"expires": time.monotonic() + 1.0, **fields}.items() if v is not None}
    return encode("act", fields, {"action": np.array([0.1, 0.2], np.float32)}, msg_id, TOKEN)


def _sends(robot):
    return [c for c in robot.calls if c[0] == "send_action"]


def test_unauthenticated_messages_are_answered_without_reading_their_arrays(served, caplog):
    server, robot, decodes = served
    payload = b"\x00" * (MAX_REQUEST_HEADER_BYTES - 16)          # under the frame cap: reaches the server
    head = b'{"v":1,"kind":"act","id":%d,"token":"%s","arrays":{"action":{"dtype":"uint8","shape":[%d]}}}'
    peer = RawPeer(server.endpoint)
    try:
        with caplog.at_level(logging.WARNING, logger="cadence.hardware.robot_server"):
            for i, token in enumerate([WRONG, "", TOKEN[:-1], TOKEN + "x"] * 5):
                reply = peer.ask([head % (i, token.encode(), len(payload)), payload])
                assert reply.kind == "error" and reply.fields["reason"] == "bad token" and reply.id == i
            # authenticated but too big for its kind: refused before its arrays are built too
            reply = peer.ask([head % (99, TOKEN.encode(), len(payload)), payload])
            assert reply.fields["reason"] == f"act carries {len(payload)} array bytes, at most 8"
            reply = peer.ask(encode("observe", {}, {"x": np.zeros(100, np.uint8)}, 100, TOKEN))
            assert reply.fields["reason"] == "observe carries 100 array bytes, at most 0"
    finally:
        peer.close()
    assert decodes == [] and _sends(robot) == []
    assert server.rejections["bad token"] == 20 and sum(server.rejections.values()) == 22
    assert TOKEN not in caplog.text and 1 <= caplog.text.count("rejected ") <= 2          # a line a second at most
    with RemoteRobot(server.endpoint, TOKEN, timeout_s=1.0) as remote:                    # still served
        remote.send_action([0.3, 0.3])
    assert "act" in decodes and len(_sends(robot)) == 1


def test_oversized_frames_drop_the_peer_before_anything_is_read(served):
    server, robot, decodes = served
    big = b"\x00" * (8 << 20)
    head = encode("act", {"expires": time.monotonic() + 60}, {"action": np.zeros(2, np.float32)}, 1, TOKEN)[0]
    head = head.replace(b'"shape":[2]', b'"shape":[%d]' % (len(big) // 4))
    attackers = [zmq.Context.instance().socket(zmq.DEALER) for _ in range(4)]
    try:
        for socket in attackers:
            socket.setsockopt(zmq.LINGER, 0)
            connect_curve(socket, curve_keys(TOKEN.encode()))       # even through the handshake
            socket.connect(server.endpoint)
            socket.send_multipart([head, big], copy=False)       # and with the right token
        with RemoteRobot(server.endpoint, TOKEN, timeout_s=1.0) as remote:
            for _ in range(10):
                remote.latest_observation()
                remote.send_action([0.1, 0.1])
        assert not any(socket.poll(200) for socket in attackers)   # dropped: no reply to them
    finally:
        for socket in attackers:
            socket.close(linger=0)
    assert dict(server.rejections) == {} and len(_sends(robot)) == 10 and decodes.count("act") == 10


def test_server_memory_stays_flat_under_25_large_unauthenticated_messages():
    proc = ServerProcess()
    big = b"\x00" * (20 << 20)
    head = encode("act", {}, {"action": np.zeros(2, np.float32)}, 1, WRONG)[0]
    head = head.replace(b'"shape":[2]', b'"shape":[%d]' % (len(big) // 4))
    attackers = [zmq.Context.instance().socket(zmq.DEALER) for _ in range(25)]
    try:
        with open(f"/proc/{proc.process.pid}/clear_refs", "w") as f:
            f.write("5")                                            # reset the peak RSS
        with RemoteRobot(proc.endpoint, TOKEN, timeout_s=1.0) as remote:
            for socket in attackers:
                socket.setsockopt(zmq.LINGER, 0)
                socket.connect(proc.endpoint)
                socket.send_multipart([head, big], copy=False)     # 25 x 20 MB, all zero-copy from one buffer
            for _ in range(20):
                remote.latest_observation()
                time.sleep(0.02)
        status = dict(line.split(":", 1) for line in open(f"/proc/{proc.process.pid}/status"))
        grew_mb = (int(status["VmHWM"].split()[0]) - int(status["VmRSS"].split()[0])) / 1024
        assert grew_mb < 20, grew_mb                               # not even one message was held
        assert proc.ask("rejections") == {}                         # never reached the server's code
    finally:
        for socket in attackers:
            socket.close(linger=0)
        proc.stop()


def test_distinct_rejection_reasons_are_counted_in_bounded_memory(served):
    server, _, _ = served
    peer = RawPeer(server.endpoint)
    try:
        for i in range(robot_server.MAX_REASONS + 50):
            reply = peer.ask([b'{"v":1,"kind":"k%d","id":%d}' % (i, i)])
            assert reply.fields["reason"] == f"unknown kind 'k{i}'"          # the reply keeps the reason
    finally:
        peer.close()
    assert len(server.rejections) == robot_server.MAX_REASONS + 1 and server.rejections["other"] == 50


def test_a_replayed_or_reordered_act_is_refused(served):
    server, robot, _ = served
    peer = RawPeer(server.endpoint)
    try:
        first = _act(10)
        assert peer.ask(first).kind == "act"
        reply = peer.ask(first)                                     # the very same frames again
        assert reply.kind == "error"
        assert reply.fields["reason"] == "act #10 is not after act #10: replayed or out of order"
        assert "replayed or out of order" in peer.ask(_act(9)).fields["reason"]
        assert peer.ask(_act(11)).kind == "act"
        assert peer.ask(encode("observe", {}, None, 12, TOKEN)).kind == "observe"
        assert peer.ask(_act(13)).kind == "act"                     # ids of other requests in between are fine
    finally:
        peer.close()
    other = RawPeer(server.endpoint)                                # the sequence is per connection
    try:
        assert other.ask(_act(1)).kind == "act"
    finally:
        other.close()
    assert len(_sends(robot)) == 4 and server.rejections["act #10 is not after act #10: replayed or out of order"] == 1


@pytest.mark.parametrize("token", [None, WRONG], ids=["no-curve", "another-token"])
def test_a_peer_without_the_token_never_gets_a_message_through(served, token):
    """The CURVE handshake needs keys only the token gives: nothing such a peer sends is read."""
    server, robot, decodes = served
    peer = RawPeer(server.endpoint, token=token)
    peer.socket.setsockopt(zmq.SNDTIMEO, 1000)           # a send waits for a connection that never comes
    try:
        for frames in (encode("hello", {}, None, 1, TOKEN), [b""] * 100_000):   # the token inside; 100,000 frames
            try:
                peer.socket.send_multipart(frames)
            except zmq.Again:
                pass
            assert not peer.socket.poll(500)
    finally:
        peer.close()
    assert server.requests == 0 and dict(server.rejections) == {} and decodes == []
    assert [call for call in robot.calls if call[0] != "connect"] == []          # only serving connected it


def _relay(upstream_port: int, recorded: bytearray) -> int:
    """A TCP relay to ``upstream_port`` on loopback for one connection, recording what the client
    sends; returns its own port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src, dst, record):
        try:
            while data := src.recv(65536):
                if record:
                    recorded.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def accept():
        client, _ = listener.accept()
        listener.close()
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client, False), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def test_a_recorded_connection_replayed_moves_nothing_and_shows_no_token(served):
    """Every message is encrypted with the connection's session keys: the bytes of a whole session
    (handshake, reset, acts) sent again on a new connection are not read as requests."""
    server, robot, decodes = served
    port = int(server.endpoint.rsplit(":", 1)[1])
    recorded = bytearray()
    with RemoteRobot(f"tcp://127.0.0.1:{_relay(port, recorded)}", TOKEN, timeout_s=1.0) as remote:
        remote.reset(seed=1)
        for i in range(3):
            remote.send_action([0.1 * i, 0.0])
    assert len(_sends(robot)) == 3 and len(recorded) > 1000
    assert TOKEN.encode() not in recorded and b'"kind"' not in recorded          # nothing in the clear
    requests = server.requests
    with socket.create_connection(("127.0.0.1", port)) as replay:
        replay.sendall(bytes(recorded))
        time.sleep(0.5)
    assert server.requests == requests and len(_sends(robot)) == 3 and dict(server.rejections) == {}


@pytest.mark.parametrize("expires, reason", [
    (None, "act without expires"),
    (True, "act without expires"),
    ("soon", "act without expires"),
    (-1.0, "command expired"),
    ("past", "command expired"),
    ("far", "expires more than 10 s ahead"),
])
def test_an_act_without_a_valid_expiry_is_refused(served, expires, reason):
    server, robot, _ = served
    value = {"past": time.monotonic() - 0.001, "far": time.monotonic() + 60}.get(expires, expires)
    peer = RawPeer(server.endpoint)
    try:
        reply = peer.ask(_act(1, expires=value))
        assert reply.kind == "error" and reason in reply.fields["reason"]
        assert peer.ask(_act(1)).kind == "act"                      # a refused act does not use up its id
    finally:
        peer.close()
    assert len(_sends(robot)) == 1


def test_the_remote_robot_sends_acts_the_server_accepts(served):
    server, robot, _ = served
    with RemoteRobot(server.endpoint, TOKEN, timeout_s=1.0) as remote:
        for i in range(5):
            remote.send_action([0.1 * i, 0.0])
    assert len(_sends(robot)) == 5 and dict(server.rejections) == {}


def test_short_tokens_are_refused_at_construction_in_one_line():
    from cadence.hardware.robot_config import robot_token

    for make in (lambda t: RobotServer(None, t, "tcp://127.0.0.1:*"), lambda t: RemoteRobot("tcp://127.0.0.1:1", t),
                 lambda t: robot_token(OmegaConf.create({"token": t}))):
        for token in ("Q", "Q" * 15):
            with pytest.raises(RobotError, match=f"token has {len(token)} bytes; it needs 16") as info:
                make(token)
            assert "\n" not in str(info.value) and "Q" not in str(info.value)
    assert robot_token(OmegaConf.create({"token": "Q" * 16})) == "Q" * 16


@pytest.fixture
def serve_processes(tmp_path):
    """Start ``cadence robot serve`` processes; each yields (process, endpoint, output file)."""
    procs = []

    def start(name):
        out = tmp_path / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "cadence.cli", "robot", "serve",
                                 "robot.endpoint=tcp://127.0.0.1:*", "max_seconds=120"],
                                env={**os.environ, "CADENCE_ROBOT_TOKEN": TOKEN}, stdout=open(out, "w"),
                                stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc, out

    def endpoint(proc, out):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            for line in out.read_text().splitlines():
                if line.startswith("serving "):
                    return line.split(" on ")[1].split()[0]
            time.sleep(0.05)
        raise AssertionError(f"the server did not start:\n{out.read_text()}")

    yield start, endpoint
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(120)
def test_robot_serve_stops_cleanly_on_sigterm_and_sighup(serve_processes):
    start, endpoint = serve_processes
    started = {sig: start(sig.name) for sig in (signal.SIGTERM, signal.SIGHUP)}   # in parallel
    for sig, (proc, out) in started.items():
        with RemoteRobot(endpoint(proc, out), TOKEN, timeout_s=1.0) as remote:
            remote.reset(seed=0)
            remote.send_action([0.5, 0.5])
            t0 = time.monotonic()
            proc.send_signal(sig)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - t0 < 5
        text = out.read_text()
        assert f"cadence robot serve: stopped by {sig.name}; robot held" in text, text
        assert "served " in text and "Traceback" not in text and TOKEN not in text


def _serve_limited(tmp_path, nofile: str):
    """``cadence robot serve`` under ``prlimit --nofile=SOFT:HARD``; (process, endpoint)."""
    out = tmp_path / f"serve-{nofile.replace(':', '-')}.log"
    proc = subprocess.Popen(["prlimit", f"--nofile={nofile}", sys.executable, "-m", "cadence.cli", "robot", "serve",
                             "robot.endpoint=tcp://127.0.0.1:*", "max_seconds=120"],
                            env={**os.environ, "CADENCE_ROBOT_TOKEN": TOKEN}, stdout=open(out, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in out.read_text().splitlines():
            if line.startswith("serving "):
                return proc, line.split(" on ")[1].split()[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{out.read_text()}")


@pytest.mark.timeout(120)
def test_idle_connections_without_the_token_cannot_lock_new_clients_out(tmp_path):
    """Plain TCP connections that never start a handshake held a descriptor each for ZeroMQ's
    default 30 s: 260 of them filled a server limited to 200 files. Now each is dropped after
    HANDSHAKE_MS, and the server raises its soft limit to the hard one."""
    proc, endpoint = _serve_limited(tmp_path, "200:4096")
    try:
        limits = open(f"/proc/{proc.pid}/limits").read()
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["4096", "4096"]
                   for line in limits.splitlines()), limits
    finally:
        proc.kill()
        proc.wait()
    proc, endpoint = _serve_limited(tmp_path, "200:200")            # a hard limit it cannot raise
    port = int(endpoint.rsplit(":", 1)[1])
    idle = []
    try:
        for _ in range(260):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        assert len(os.listdir(f"/proc/{proc.pid}/fd")) >= 190            # the server's files are full now
        t0 = time.monotonic()
        with RemoteRobot(endpoint, TOKEN, timeout_s=1.0, connect_timeout_s=15.0) as remote:
            remote.reset(seed=0)
        assert time.monotonic() - t0 < 15
    finally:
        for s in idle:
            s.close()
        proc.kill()
        proc.wait()
