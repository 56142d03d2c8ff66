"""RobotServer <-> RemoteRobot over real ZeroMQ TCP loopback, the server in another OS process.

The server process runs a SimRobot of the default task behind a recording wrapper; a pipe to
it answers "calls" (what the robot was asked to do) and "rejections", so a test can check that
a rejected message never reached the robot.
"""
import logging
import math
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import zmq
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.remote_robot import RemoteRobot
from cadence.hardware.robot import Robot, RobotError, RobotTimeout
from cadence.hardware.robot_server import RobotServer, is_loopback_endpoint
from cadence.hardware.wire import decode, encode
from cadence.hardware.wire_keys import connect_curve, curve_keys

TASK = "cadence/BimodalReach-v0"
TOKEN = "test-token-7f3a-5c1e"
RATE_HZ = 50.0


class _Recording:
    """A Robot that records every call that could move the robot (reads are not recorded)."""

    def __init__(self, robot):
        self.robot, self.spec, self.calls = robot, robot.spec, []

    def connect(self):
        self.calls.append(("connect",))
        self.robot.connect()

    def reset(self, seed=None):
        self.calls.append(("reset", seed))
        return self.robot.reset(seed=seed)

    def latest_observation(self):
        return self.robot.latest_observation()

    def send_action(self, action):
        self.calls.append(("send_action", np.asarray(action).tolist()))
        return self.robot.send_action(action)

    def hold(self):
        self.calls.append(("hold",))
        self.robot.hold()

    def disconnect(self):
        self.robot.disconnect()


def _server_main(conn, token, rate_hz, endpoint):
    """Server process: serve on ``endpoint``; answer control requests on ``conn``."""
    from cadence.hardware.sim_robot import SimRobot

    robot = _Recording(SimRobot(TASK, rate_hz=rate_hz))
    server = RobotServer(robot, token, endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conn.send(server.endpoint)
    while True:
        request = conn.recv()
        if request == "calls":
            conn.send(list(robot.calls))
        elif request == "rejections":
            conn.send(dict(server.rejections))
        else:                               # "stop"
            server.close()
            thread.join()
            conn.send("stopped")
            return


class ServerProcess:
    def __init__(self, token=TOKEN, rate_hz=RATE_HZ, endpoint="tcp://127.0.0.1:*"):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_server_main, args=(child, token, rate_hz, endpoint), daemon=True)
        self.process.start()
        assert self.conn.poll(60), "server process did not start"
        self.endpoint = self.conn.recv()

    def ask(self, what):
        self.conn.send(what)
        assert self.conn.poll(10)
        return self.conn.recv()

    def stop(self):
        if self.process.is_alive():
            try:
                self.ask("stop")
            except (OSError, EOFError, AssertionError):
                pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess()
    yield proc
    proc.stop()


@pytest.fixture
def remote(server):
    robot = RemoteRobot(server.endpoint, TOKEN, timeout_s=0.5)
    robot.connect()
    yield robot
    robot.disconnect()


class RawPeer:
    """A raw DEALER socket through the CURVE handshake of ``token`` (None: without CURVE): sends
    any frames, returns the decoded reply."""

    def __init__(self, endpoint, token=TOKEN):
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if token is not None:
            connect_curve(self.socket, curve_keys(token.encode()))
        self.socket.connect(endpoint)

    def ask(self, frames, timeout_ms=10_000):
        self.socket.send_multipart(frames)
        assert self.socket.poll(timeout_ms), f"no reply within {timeout_ms} ms"
        return decode(self.socket.recv_multipart())

    def close(self):
        self.socket.close(linger=0)


def test_connect_gives_the_robots_spec_and_a_same_machine_clock_offset(remote):
    from cadence.hardware.sim_robot import SimRobot

    assert isinstance(remote, Robot)
    assert remote.spec == SimRobot(TASK, rate_hz=RATE_HZ).spec
    assert remote.spec.action.low == (-1.5, -1.5)
    assert abs(remote.clock_offset_s) < 0.005 and 0 < remote.rtt_s < 0.1
    assert remote.obs_max_age_s == pytest.approx(1 / RATE_HZ)


def test_reset_act_and_advancing_observations_one_round_trip_per_tick(remote):
    obs = remote.reset(seed=3)
    now = time.monotonic()
    assert obs.seq == 0 and obs.values["state"].shape == (6,) and obs.values["state"].dtype == np.float32
    assert now - 0.5 < obs.t_capture <= now                  # moved onto this process's clock
    assert obs.info["done"] is False and "is_success" in obs.info
    start = obs.values["state"][:2].copy()

    applied = remote.send_action(np.array([2.0, -9.0]))       # float64 in, clipped by the robot
    assert applied.dtype == np.float32 and applied.tolist() == [1.5, -1.5]

    target = (start + np.array([0.3, 0.0])).astype(np.float32)
    clock, period, trips0 = MonotonicClock(), 1 / RATE_HZ, remote.round_trips
    seqs, t_next, ticks = [], time.monotonic(), 15
    for _ in range(ticks):
        np.testing.assert_array_equal(remote.send_action(target), target)
        seqs.append(remote.latest_observation().seq)         # served from the act reply
        t_next += period
        clock.sleep_until(t_next)
    assert remote.round_trips - trips0 == ticks
    assert seqs == sorted(seqs) and seqs[-1] >= seqs[0] + 5
    time.sleep(0.1)
    final = remote.latest_observation()                      # stale cache: asks the server
    assert remote.round_trips - trips0 == ticks + 1 and final.seq > seqs[-1]
    assert np.linalg.norm(final.values["state"][:2] - target) < 0.05


def _raw_act(action, token=TOKEN, msg_id=5):
    """An act request built by hand, so that encode's own checks do not stop it."""
    head, *_ = encode("act", {}, {"action": np.zeros(2, np.float32)}, msg_id, token)
    a = np.asarray(action)
    head = head.replace(b'"dtype":"float32","shape":[2]',
                        b'"dtype":"%s","shape":%s' % (a.dtype.name.encode(), str(list(a.shape)).encode()))
    return [head, a.astype(a.dtype.newbyteorder("<")).tobytes()]


def test_rejected_requests_get_a_reason_and_never_reach_the_robot(server, remote):
    start = remote.reset(seed=5).values["state"][:2].copy()
    target = (start + np.array([-0.2, 0.1])).astype(np.float32)
    remote.send_action(target)
    calls_before = server.ask("calls")
    rejections_before = server.ask("rejections")
    bogus = np.array([1.4, 1.4], np.float32)
    cases = [
        (_raw_act(bogus, token="wrong-token"), "bad token"),
        (_raw_act(bogus, token=""), "bad token"),
        (_raw_act(bogus, token=None), "bad token"),
        (_raw_act(np.array([1.4, 1.4, 1.4], np.float32)), "act carries 12 array bytes, at most 8"),
        (_raw_act(np.array([[1.4, 1.4]], np.float32)), "action: shape [1, 2] != [2]"),
        (_raw_act(bogus.astype(np.float64)), "act carries 16 array bytes, at most 8"),
        (_raw_act(np.array([1, 2], np.int32)), "action: dtype int32 != float32"),
        (_raw_act(np.array([1.4, np.nan], np.float32)), "array 'action': non-finite values"),
        (_raw_act(np.array([np.inf, 1.4], np.float32)), "array 'action': non-finite values"),
        ([_raw_act(bogus)[0]], "frame count mismatch"),
        ([_raw_act(bogus)[0], b"\x00" * 7], "wrong byte length"),
        ([b"\x00garbage"], "header not JSON"),
        ([b"[1]"], "header not an object"),
        (encode("error", {"reason": "x"}, None, 6, TOKEN), "not a request kind"),
        ([b'{"v":1,"kind":"launch","id":6,"token":"%s"}' % TOKEN.encode()], "unknown kind"),
        (encode("reset", {"seed": -1}, None, 7, TOKEN), "bad seed"),
        (encode("hold", {}, {"x": np.zeros(1, np.uint8)}, 8, TOKEN), "hold carries 1 array bytes, at most 0"),
        (encode("hold", {}, {"x": np.zeros(0, np.uint8)}, 8, TOKEN), "hold: keys ['x'] != []"),
    ]
    peer = RawPeer(server.endpoint)
    try:
        for frames, reason in cases:
            reply = peer.ask(frames)
            assert reply.kind == "error" and reply.fields["ok"] is False, reason
            assert reason in reply.fields["reason"], (reason, reply.fields["reason"])
        # the reply is addressed to the request's id when the id could be read
        assert peer.ask(_raw_act(bogus, token="nope", msg_id=77)).id == 77
    finally:
        peer.close()
    assert server.ask("calls") == calls_before                # the robot was not touched
    rejections = server.ask("rejections")
    assert sum(rejections.values()) - sum(rejections_before.values()) == len(cases) + 1
    assert rejections["bad token"] - rejections_before.get("bad token", 0) == 4

    time.sleep(0.15)                                         # still servoing to target, not to bogus
    remote.obs_max_age_s = 0.0
    position = remote.latest_observation().values["state"][:2]
    assert np.linalg.norm(position - target) < 0.05 and np.linalg.norm(position - bogus) > 1.0

    with pytest.raises(RobotTimeout, match="with the same token"):    # the wrong token: no handshake
        RemoteRobot(server.endpoint, "wrong-token-0123456789", connect_timeout_s=0.5).connect()
    trips = remote.round_trips                               # refused locally, nothing sent
    with pytest.raises(RobotError, match="non-finite"):
        remote.send_action([np.nan, 0.0])
    with pytest.raises(RobotError, match="shape"):
        remote.send_action([0.0, 0.0, 0.0])
    assert remote.round_trips == trips and server.ask("calls") == calls_before


def test_server_refuses_non_loopback_binds_and_short_tokens():
    for endpoint in ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.10:5555", "tcp://eth0:5555",
                     "tcp://[::]:5555", "udp://127.0.0.1:5555", "127.0.0.1:5555"]:
        assert not is_loopback_endpoint(endpoint)
        with pytest.raises(ValueError, match="allow_remote"):
            RobotServer(None, TOKEN, endpoint)
    for endpoint in ["tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555",
                     "tcp://127.0.0.2:1", "ipc:///tmp/robot.ipc", "inproc://robot"]:
        assert is_loopback_endpoint(endpoint)
    with pytest.raises(RobotError, match="token has 0 bytes"):
        RobotServer(None, "", "tcp://127.0.0.1:*")


def test_rejections_are_logged_at_most_once_per_interval_and_counted(caplog):
    from cadence.hardware.sim_robot import SimRobot

    robot = _Recording(SimRobot(TASK, rate_hz=RATE_HZ))
    server = RobotServer(robot, TOKEN, "tcp://127.0.0.1:*", log_interval_s=1.0)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    peer = RawPeer(server.endpoint)
    try:
        with caplog.at_level(logging.WARNING, logger="cadence.hardware.robot_server"):
            t0 = time.monotonic()
            for i in range(120):
                peer.ask([b"junk %d" % i])
            elapsed = time.monotonic() - t0
            time.sleep(1.05)
            peer.ask([b"junk again"])                            # a line: the interval has passed
        assert peer.ask(encode("hello", {}, None, 1, TOKEN)).kind == "hello"
    finally:
        peer.close()
        server.close()
        thread.join(5)
    lines = [r.getMessage() for r in caplog.records if r.name == "cadence.hardware.robot_server"]
    assert 2 <= len(lines) <= 2 + elapsed // 1.0, lines
    assert lines[0].endswith("header not JSON (1 rejected in all, 0 not logged since the last line)")
    assert "121 rejected in all" in lines[-1]
    not_logged = [int(line.split(", ")[-1].split()[0]) for line in lines]
    assert sum(not_logged) + len(lines) == 121                 # every refusal is either logged or counted
    assert server.rejections == {"header not JSON": 121} and server.requests == 1
    assert robot.calls == [("connect",), ("hold",)] and not thread.is_alive()   # close() holds


def _stop_process(pid):
    """SIGSTOP ``pid`` and wait until all its threads are stopped (delivery is asynchronous)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass
        if states and all(state in "tT" for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def test_timeouts_are_bounded_and_late_replies_discarded():
    proc = ServerProcess()
    try:
        robot = RemoteRobot(proc.endpoint, TOKEN, timeout_s=0.1, obs_max_age_s=0.0)
        robot.connect()
        robot.reset(seed=0)
        calls_before = len(proc.ask("calls"))
        _stop_process(proc.process.pid)                      # server alive but not answering
        try:
            t0 = time.monotonic()
            with pytest.raises(RobotTimeout):
                robot.latest_observation()
            assert time.monotonic() - t0 < 0.1 + 0.1
            with pytest.raises(RobotTimeout):
                robot.send_action([0.0, 0.0])
            assert robot.timeouts == 2
        finally:
            os.kill(proc.process.pid, signal.SIGCONT)
        robot.timeout_s = 2.0
        obs = robot.latest_observation()                     # the two late replies come first
        assert robot.late_replies == 2 and obs is not None and obs.values["state"].shape == (6,)
        # the command the client gave up on reached the server late: refused, the robot never got it
        assert not [c for c in proc.ask("calls")[calls_before:] if c[0] == "send_action"]
        assert any("expired" in reason for reason in proc.ask("rejections"))

        proc.process.kill()                                  # server gone
        proc.process.join(5)
        robot.timeout_s = 0.1
        for call in (robot.latest_observation, robot.hold, lambda: robot.send_action([0.0, 0.0])):
            t0 = time.monotonic()
            with pytest.raises(RobotTimeout):
                call()
            assert time.monotonic() - t0 < 0.1 + 0.1

        # a server back on the same port gets none of the requests sent while it was gone
        proc = ServerProcess(endpoint=proc.endpoint)
        robot.timeout_s, trips = 2.0, robot.round_trips
        assert robot.latest_observation() is not None       # cached; the new robot has none yet
        assert proc.ask("calls") == [("connect",)] and robot.round_trips == trips + 1
        robot.timeout_s = 0.1
        proc.stop()                                          # server stopped
        t0 = time.monotonic()
        robot.disconnect()                                   # bye times out quickly too
        assert time.monotonic() - t0 < 0.1 + 0.1
        with pytest.raises(RobotError, match="not connected"):
            robot.send_action([0.0, 0.0])
    finally:
        proc.stop()


def test_connect_to_nothing_times_out():
    with zmq.Context.instance().socket(zmq.ROUTER) as s:    # find a free port, then free it
        port = s.bind_to_random_port("tcp://127.0.0.1")
    robot = RemoteRobot(f"tcp://127.0.0.1:{port}", TOKEN, connect_timeout_s=0.2)
    t0 = time.monotonic()
    with pytest.raises(RobotTimeout):
        robot.connect()
    assert time.monotonic() - t0 < 0.5 and math.isclose(robot.clock_offset_s, 0.0)
    with pytest.raises(RobotError, match="not connected"):
        robot.latest_observation()
