"""RemoteRobot against a server that lies (it holds the token, so it can be the server): its
hello and observations are checked, and a bad one ends in RobotError, never a non-finite time
or an allocation the spec asks for."""
import json
import threading

import numpy as np
import pytest
import zmq
from cadence.hardware.remote_robot import RemoteRobot
from cadence.hardware.robot import RobotError, RobotTimeout
from cadence.hardware.wire_keys import curve_keys

TOKEN = "lying-server-token-0123"
SPEC = {"name": "arm", "rate_hz": 50.0,
        "action": {"shape": [2], "dtype": "float32", "low": [-1.0, -1.0], "high": [1.0, 1.0]},
        "observation": {"state": {"shape": [2], "dtype": "float32", "low": None, "high": None}}}


class LyingServer:
    """A CURVE server with the token's keys answering every request in raw JSON text it is given."""

    def __init__(self, spec_text: str, t_server: str = "1.0", t_capture: str = "1.0"):
        keys = curve_keys(TOKEN.encode())
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.curve_server = True
        self.socket.curve_secretkey, self.socket.curve_publickey = keys.server_secret, keys.server_public
        self.socket.linger = 0
        self.endpoint = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self.texts = {"spec": spec_text, "t_server": t_server, "t_capture": t_capture}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            if not self.socket.poll(20):
                continue
            peer, head = self.socket.recv_multipart()[:2]
            request = json.loads(head)
            kind, i, t = request["kind"], request["id"], self.texts
            if kind == "hello":
                reply = [f'{{"v":1,"kind":"hello","id":{i},"ok":true,"t_server":{t["t_server"]},'
                         f'"spec":{t["spec"]},"arrays":{{}}}}'.encode()]
            elif kind in ("observe", "reset"):
                reply = [f'{{"v":1,"kind":"{kind}","id":{i},"ok":true,"obs":{{"t_capture":{t["t_capture"]},"seq":1,'
                         f'"info":{{}}}},"arrays":{{"obs.state":{{"dtype":"float32","shape":[2]}}}}}}'.encode(),
                         np.zeros(2, "<f4").tobytes()]
            else:
                reply = [f'{{"v":1,"kind":"{kind}","id":{i},"ok":true,"arrays":{{}}}}'.encode()]
            self.socket.send_multipart([peer, *reply])

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.socket.close(linger=0)


@pytest.fixture
def lying():
    servers = []

    def start(spec=SPEC, **texts):
        servers.append(LyingServer(json.dumps(spec), **texts))
        return RemoteRobot(servers[-1].endpoint, TOKEN, timeout_s=0.3, connect_timeout_s=1.0, obs_max_age_s=0.0)

    yield start
    for server in servers:
        server.close()


def test_an_honest_reply_is_taken(lying):
    robot = lying()
    robot.connect()
    assert robot.spec.rate_hz == 50.0 and robot.latest_observation().t_capture == pytest.approx(1.0 - robot.clock_offset_s)
    robot.disconnect()


@pytest.mark.parametrize("texts", [{"t_server": "1e400"}, {"t_server": "-1e400"}])
def test_a_hello_time_that_overflows_is_never_taken(lying, texts):
    robot = lying(**texts)
    with pytest.raises(RobotTimeout):                  # the reply is refused as JSON: no valid hello came
        robot.connect()
    assert robot.bad_replies >= 1


def test_an_observation_time_that_overflows_is_never_handed_on(lying):
    robot = lying(t_capture="1e400")
    robot.connect()
    with pytest.raises(RobotTimeout):
        robot.latest_observation()
    assert robot.bad_replies >= 1
    robot.disconnect()


@pytest.mark.parametrize("change, message", [
    ({"rate_hz": 0}, r"rate_hz 0.0 not in"),
    ({"action": {"shape": [2], "dtype": "U400000000", "low": None, "high": None}}, "dtype 'U400000000' not allowed"),
    ({"action": {"shape": [10 ** 10], "dtype": "float32", "low": None, "high": None}}, "action: more than"),
    ({"action": {"shape": [2], "dtype": "float32", "low": [-1, 10 ** 400], "high": [1, 1]}}, "OverflowError"),
    ({"observation": "none"}, "AttributeError"),
])
def test_a_spec_no_robot_could_serve_is_refused_at_connect(lying, change, message):
    robot = lying({**SPEC, **change})
    with pytest.raises(RobotError, match=f"bad spec in hello reply: .*{message}"):
        robot.connect()
    with pytest.raises(RobotError, match="not connected"):
        robot.send_action([0.0, 0.0])
