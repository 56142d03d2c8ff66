"""Serve one :class:`~cadence.hardware.robot.Robot` to :class:`RemoteRobot` clients over ZeroMQ.

A ROUTER socket answers each request (see :mod:`cadence.hardware.wire`) in order, on the thread
that runs :meth:`RobotServer.serve`. Every request is decoded, its token checked
(``hmac.compare_digest``) and its arrays checked against the robot's spec *before* the robot is
touched; a rejected request gets an ``error`` reply with the reason, is counted in
``rejections[reason]`` and logged (the first ``log_first``, then every ``log_every``-th).

The token is an access check against mistakes and stray peers on a trusted network, not
encryption: it travels in the clear. Binding to anything but loopback / ipc needs
``allow_remote=True``.

Typical use::

    server = RobotServer(SimRobot("cadence/BimodalReach-v0"), token="...")
    threading.Thread(target=server.serve_forever).start()   # or call it on this thread
    ...
    server.close()            # from any thread: stops serve, holds and disconnects the robot
"""
from __future__ import annotations

import collections
import hmac
import ipaddress
import logging
import threading
from typing import Protocol, Self

import numpy as np
import zmq
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Robot, RobotError
from cadence.hardware.wire import (
    MAX_ARRAY_BYTES,
    MAX_ARRAYS,
    MAX_HEADER_BYTES,
    REQUEST_KINDS,
    Message,
    WireError,
    check_against,
    decode,
    encode,
    observation_payload,
)

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + MAX_ARRAY_BYTES + MAX_ARRAYS * 64


class _Stoppable(Protocol):
    def is_set(self) -> bool: ...


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ``ipc://``, ``inproc://`` and ``tcp://`` on a loopback address or ``localhost``."""
    transport, sep, address = endpoint.partition("://")
    if not sep:
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host, _, _port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:                     # "*", an interface name, a host name
        return False
    mapped = getattr(address, "ipv4_mapped", None)    # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


class RobotServer:
    """Answer :mod:`~cadence.hardware.wire` requests for ``robot`` on ``endpoint``.

    The socket is bound at construction (``endpoint`` may end in ``:*`` for a free port; the
    bound address is ``self.endpoint``). With ``manage_robot`` the server connects the robot
    when serving starts and holds + disconnects it on :meth:`close`.
    Counters: ``requests`` (answered ok), ``rejections`` (per reason, robot untouched),
    ``robot_errors`` (the robot raised).
    """

    def __init__(self, robot: Robot, token: str, endpoint: str = "tcp://127.0.0.1:5555", *,
                 allow_remote: bool = False, manage_robot: bool = True, clock=None,
                 poll_interval_s: float = 0.05, log_first: int = 10, log_every: int = 100):
        if not isinstance(token, str) or not token:
            raise ValueError("RobotServer needs a non-empty token")
        if not allow_remote and not is_loopback_endpoint(endpoint):
            raise ValueError(f"refusing to bind {endpoint!r}: not loopback (127.0.0.1, localhost, ::1 "
                             "or ipc://); pass allow_remote=True to serve the network")
        self.robot = robot
        self.clock = clock if clock is not None else MonotonicClock()
        self.manage_robot = manage_robot
        self.poll_interval_s = float(poll_interval_s)
        self.log_first, self.log_every = int(log_first), max(1, int(log_every))
        self._token = token.encode("utf-8")
        self.rejections: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.robot_errors = 0
        self._stop = threading.Event()
        self._serving = threading.Lock()
        self._closed = False
        self._robot_connected = False
        socket = zmq.Context.instance().socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)   # a bigger message drops its peer
        if "[" in endpoint or endpoint.startswith("tcp://::"):
            socket.setsockopt(zmq.IPV6, 1)
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as e:
            socket.close(linger=0)
            raise OSError(f"cannot bind robot server to {endpoint!r}: {e}") from e
        self._socket = socket
        self.endpoint: str = socket.getsockopt_string(zmq.LAST_ENDPOINT)

    # --- serving -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until :meth:`stop` or :meth:`close` (from another thread)."""
        self.serve(None)

    def serve(self, stop_event: _Stoppable | None = None) -> None:
        """Serve until ``stop_event`` (a ``threading.Event``, ``multiprocessing.Event``, ...) is
        set, or :meth:`stop` / :meth:`close` is called; returns within ``poll_interval_s``
        of that plus the request in progress."""
        if not self._serving.acquire(blocking=False):
            raise RuntimeError("RobotServer is already serving")
        try:
            if self._closed:
                raise RuntimeError("RobotServer is closed")
            if self.manage_robot and not self._robot_connected:
                self.robot.connect()
                self._robot_connected = True
            poll_ms = max(1, round(self.poll_interval_s * 1000))
            while not self._stop.is_set() and not (stop_event is not None and stop_event.is_set()):
                if not self._socket.poll(poll_ms, zmq.POLLIN):
                    continue
                for _ in range(100):           # drain, but look at the stop flags now and then
                    try:
                        frames = self._socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(frames)
        finally:
            self._serving.release()

    def stop(self) -> None:
        """Make :meth:`serve` return (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        """Stop serving (waits for :meth:`serve` to return), close the socket and, with
        ``manage_robot``, hold and disconnect the robot. Idempotent."""
        self._stop.set()
        with self._serving:
            if self._closed:
                return
            self._closed = True
            self._socket.close(linger=0)
            if self.manage_robot and self._robot_connected:
                self._robot_connected = False
                try:
                    self.robot.hold()
                except Exception:
                    logger.exception("robot.hold() failed while closing the server")
                self.robot.disconnect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one request ---------------------------------------------------------------------
    def _handle(self, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        try:
            request = decode(body)
        except WireError as e:
            self._reject(identity, e.msg_id, None, e.reason)
            return
        if request.kind not in REQUEST_KINDS:
            self._reject(identity, request.id, request.kind, f"not a request kind: {request.kind}")
            return
        token = (request.token or "").encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(token, self._token):
            self._reject(identity, request.id, request.kind, "bad token")
            return
        try:
            self._validate(request)
        except WireError as e:
            self._reject(identity, request.id, request.kind, e.reason)
            return
        try:
            fields, arrays = self._dispatch(request)
        except RobotError as e:
            self.robot_errors += 1
            logger.warning("robot error on %s: %s", request.kind, e)
            self._reply_error(identity, request.id, f"robot error: {e}"[:500])
            return
        except Exception as e:
            self.robot_errors += 1
            logger.exception("robot failed on %s", request.kind)
            self._reply_error(identity, request.id, f"robot failed: {type(e).__name__}: {e}"[:500])
            return
        try:
            reply = encode(request.kind, {"ok": True, **fields}, arrays, request.id)
        except WireError as e:
            self.robot_errors += 1
            logger.warning("cannot encode the %s reply: %s", request.kind, e.reason)
            self._reply_error(identity, request.id, f"reply not encodable: {e.reason}")
            return
        self.requests += 1
        self._send(identity, reply)

    def _validate(self, request: Message) -> None:
        spec = self.robot.spec
        expected = {"action": spec.action} if request.kind == "act" else {}
        check_against(request.arrays, expected, request.kind)
        if request.kind == "act":
            expires = request.fields.get("expires")
            if expires is not None and not isinstance(expires, (int, float)):
                raise WireError("bad expires: must be null or a number")
            if expires is not None and self.clock.now() > expires:
                raise WireError("command expired: it arrived after the client stopped waiting for it")
        if request.kind == "reset":
            seed = request.fields.get("seed")
            if seed is not None and not (type(seed) is int and 0 <= seed < 2 ** 63):
                raise WireError("bad seed: must be null or an int in [0, 2**63)")

    def _dispatch(self, request: Message) -> tuple[dict, dict[str, np.ndarray]]:
        kind, robot = request.kind, self.robot
        if kind == "hello":
            return {"spec": robot.spec.to_json(), "t_server": self.clock.now()}, {}
        if kind == "reset":
            return observation_payload(robot.reset(seed=request.fields.get("seed")))
        if kind == "observe":
            return observation_payload(robot.latest_observation())
        if kind == "act":
            applied = robot.send_action(request.arrays["action"])
            fields, arrays = observation_payload(robot.latest_observation())
            arrays["applied"] = np.asarray(applied, dtype=robot.spec.action.dtype)
            return fields, arrays
        if kind == "hold":
            robot.hold()
            return {}, {}
        assert kind == "bye", kind     # bye: nothing to do on the robot; a loop holds before it leaves
        return {}, {}

    def _reject(self, identity: bytes, msg_id: int | None, kind: str | None, reason: str) -> None:
        self.rejections[reason] += 1
        n = sum(self.rejections.values())
        if n <= self.log_first or n % self.log_every == 0:
            logger.warning("rejected %s request from peer %s: %s (%d rejected so far%s)",
                           kind or "a", identity.hex(), reason, n,
                           "" if n < self.log_first else f"; logging every {self.log_every}th")
        self._reply_error(identity, msg_id if msg_id is not None else 0, reason)

    def _reply_error(self, identity: bytes, msg_id: int, reason: str) -> None:
        self._send(identity, encode("error", {"ok": False, "reason": reason}, None, msg_id))

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self._socket.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:                  # the peer does not read its replies: drop this one
            logger.debug("dropped a reply to peer %s (its queue is full)", identity.hex())
