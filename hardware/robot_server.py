"""Serve one :class:`~cadence.hardware.robot.Robot` to :class:`RemoteRobot` clients over ZeroMQ.

A ROUTER socket answers each request (see :mod:`cadence.hardware.wire`) in order, on the thread
that runs :meth:`RobotServer.serve`. A request passes these checks, cheapest first, before the
robot is touched:

0. Handshake. Connections are encrypted and authenticated with CURVE keys derived from the token
   (:mod:`cadence.hardware.wire_keys`): a peer without the token never gets a message through.
   A connection that has not finished its handshake within ``HANDSHAKE_MS`` is dropped, and the
   process may open as many files as its hard limit allows (idle connections from a peer without
   the token filled the common 1,024 and locked new clients out for ZeroMQ's default 30 s).
1. Transport. ZeroMQ drops the connection of a peer that sends a frame larger than any request
   has (``ZMQ_MAXMSGSIZE``: a request header or the robot's action, whichever is larger; libzmq
   applies it per frame) and queues at most ``PEER_HWM`` requests per peer (``REPLY_HWM``
   replies: libzmq counts queued messages with credit that lags behind, and a ROUTER socket
   silently drops a reply when that count reaches its limit, so the reply side keeps room).
2. Header. Only frame 0 is parsed (at most ``MAX_REQUEST_HEADER_BYTES``) and its token compared
   (``hmac.compare_digest``). A request without the token is answered ``bad token``; its array
   frames are never read.
3. Size per kind. An ``act`` carries exactly the bytes of the robot's action; the other requests
   carry no arrays.
4. Payload. The arrays are built and checked against the robot's spec (shape, dtype, finite).
5. Commands. An ``act``'s id is its sequence number: it must be greater than the id of the last
   act accepted on this connection (a replayed or reordered command is refused; the last
   ``MAX_PEERS`` connections to act are remembered). Its ``expires``
   (server clock) is required, must not have passed and may be at most ``MAX_EXPIRY_S`` ahead.

A refused request gets an ``error`` reply with the reason, is counted in ``rejections[reason]``
and logged at most once per ``log_interval_s`` (the line counts the refusals not logged since).

The token is the one secret: the CURVE keys come from it, and requests carry it too (encrypted,
checked again). It is never logged. Binding to anything but loopback / ipc needs
``allow_remote=True``.

Typical use::

    server = RobotServer(SimRobot("cadence/BimodalReach-v0"), token=secrets.token_hex(16))
    threading.Thread(target=server.serve_forever).start()   # or call it on this thread
    ...
    server.close()            # from any thread: stops serve, holds and disconnects the robot
"""
from __future__ import annotations

import collections
import resource
import hmac
import ipaddress
import logging
import math
import threading
import time
from typing import Protocol, Self

import numpy as np
import zmq
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Robot, RobotError
from cadence.hardware.wire_keys import FRAME_OVERHEAD, curve_keys, serve_curve
from cadence.hardware.wire import (
    MAX_REQUEST_HEADER_BYTES,
    REQUEST_KINDS,
    Message,
    WireError,
    check_against,
    check_token,
    decode_header,
    decode_payload,
    encode,
    observation_payload,
)

logger = logging.getLogger(__name__)

PEER_HWM = 16            # requests queued per peer at most
REPLY_HWM = 1000         # replies queued per peer at most (a peer that never reads them; ZeroMQ's default)
MAX_EXPIRY_S = 10.0      # an act may be valid for at most this long
MAX_REASONS = 100        # distinct rejection reasons counted; further ones count as "other"
MAX_PEERS = 1024         # peers whose last act id is remembered (the least recent forgotten first)
HANDSHAKE_MS = 2000      # a connection that has not finished its CURVE handshake by then is dropped


def raise_fd_limit() -> None:
    """Let this process open as many files as its hard limit allows: every connection, one that
    never finishes its handshake included, holds a descriptor until ``HANDSHAKE_MS``, and the
    common soft limit of 1,024 is what a peer without the token could otherwise fill."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 ** 20), hard))
    except (ValueError, OSError) as e:          # a platform or a sandbox that refuses: serve with what there is
        logger.warning("robot server: cannot raise the open-file limit: %s", e)


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
    ``token`` must have at least ``MIN_TOKEN_BYTES`` bytes (:class:`RobotError` otherwise).
    Counters: ``requests`` (answered ok), ``rejections`` (per reason, robot untouched),
    ``robot_errors`` (the robot raised).
    """

    def __init__(self, robot: Robot, token: str, endpoint: str = "tcp://127.0.0.1:5555", *,
                 allow_remote: bool = False, manage_robot: bool = True, clock=None,
                 poll_interval_s: float = 0.05, log_interval_s: float = 1.0):
        self._token = check_token(token)
        if not allow_remote and not is_loopback_endpoint(endpoint):
            raise ValueError(f"refusing to bind {endpoint!r}: not loopback (127.0.0.1, localhost, ::1 "
                             "or ipc://); pass allow_remote=True to serve the network")
        self.robot = robot
        self.clock = clock if clock is not None else MonotonicClock()
        self.manage_robot = manage_robot
        self.poll_interval_s = float(poll_interval_s)
        self.log_interval_s = float(log_interval_s)
        self._logged_at, self._unlogged = -math.inf, 0
        action = robot.spec.action
        self._payload_limits = {**dict.fromkeys(REQUEST_KINDS, 0),       # array bytes per request kind
                                "act": math.prod(action.shape) * np.dtype(action.dtype).itemsize}
        self._last_act: collections.OrderedDict[bytes, int] = collections.OrderedDict()   # peer -> its last act id
        self.rejections: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.robot_errors = 0
        self._stop = threading.Event()
        self._serving = threading.Lock()
        self._closed = False
        self._robot_connected = False
        self._context = zmq.Context()                  # its own: the ZAP handler is per context
        socket = self._context.socket(zmq.ROUTER)
        self._auth = serve_curve(socket, self._context, curve_keys(self._token))
        max_frame = max(MAX_REQUEST_HEADER_BYTES, self._payload_limits["act"]) + FRAME_OVERHEAD   # a bigger one drops its peer
        raise_fd_limit()
        for option, value in ((zmq.LINGER, 0), (zmq.RCVHWM, PEER_HWM), (zmq.SNDHWM, REPLY_HWM),
                              (zmq.MAXMSGSIZE, max_frame), (zmq.HANDSHAKE_IVL, HANDSHAKE_MS)):
            socket.setsockopt(option, value)
        if "[" in endpoint or endpoint.startswith("tcp://::"):
            socket.setsockopt(zmq.IPV6, 1)
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as e:
            socket.close(linger=0)
            self._auth.stop()
            self._context.term()
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
        ``manage_robot``, hold and disconnect the robot (a failing hold raises after the
        disconnect). Idempotent."""
        self._stop.set()
        with self._serving:
            if self._closed:
                return
            self._closed = True
            self._socket.close(linger=0)
            self._auth.stop()
            self._context.term()
            if self.manage_robot and self._robot_connected:
                self._robot_connected = False
                try:
                    self.robot.hold()
                finally:
                    self.robot.disconnect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one request ---------------------------------------------------------------------
    def _handle(self, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        try:
            head = decode_header(body, MAX_REQUEST_HEADER_BYTES)
        except WireError as e:
            self._reject(identity, e.msg_id, None, e.reason)
            return
        if head.kind not in REQUEST_KINDS:
            self._reject(identity, head.id, head.kind, f"not a request kind: {head.kind}")
            return
        if not hmac.compare_digest((head.token or "").encode("utf-8", "surrogatepass"), self._token):
            self._reject(identity, head.id, head.kind, "bad token")     # its arrays are never read
            return
        limit = self._payload_limits[head.kind]
        if head.payload_bytes > limit:
            self._reject(identity, head.id, head.kind, f"{head.kind} carries {head.payload_bytes} "
                                                       f"array bytes, at most {limit}")
            return
        try:
            request = decode_payload(head)
            self._validate(identity, request)
        except WireError as e:
            self._reject(identity, head.id, head.kind, e.reason)
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

    def _validate(self, identity: bytes, request: Message) -> None:
        spec = self.robot.spec
        expected = {"action": spec.action} if request.kind == "act" else {}
        check_against(request.arrays, expected, request.kind)
        if request.kind == "act":
            last = self._last_act.get(identity)
            if last is not None and request.id <= last:
                raise WireError(f"act #{request.id} is not after act #{last}: replayed or out of order")
            expires = request.fields.get("expires")
            if type(expires) not in (int, float):
                raise WireError("act without expires: a command must carry the server time it expires")
            now = self.clock.now()
            if now > expires:
                raise WireError("command expired: it arrived after the client stopped waiting for it")
            if expires > now + MAX_EXPIRY_S:
                raise WireError(f"expires more than {MAX_EXPIRY_S:g} s ahead")
            self._last_act[identity] = request.id
            self._last_act.move_to_end(identity)
            if len(self._last_act) > MAX_PEERS:
                self._last_act.popitem(last=False)
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
        counted = reason if reason in self.rejections or len(self.rejections) < MAX_REASONS else "other"
        self.rejections[counted] += 1
        now = time.monotonic()
        if now - self._logged_at < self.log_interval_s:
            self._unlogged += 1
        else:
            logger.warning("rejected %s request from peer %s: %s (%d rejected in all, %d not logged since the "
                           "last line)", kind or "a", identity.hex(), reason, sum(self.rejections.values()),
                           self._unlogged)
            self._logged_at, self._unlogged = now, 0
        self._reply_error(identity, msg_id if msg_id is not None else 0, reason)

    def _reply_error(self, identity: bytes, msg_id: int, reason: str) -> None:
        self._send(identity, encode("error", {"ok": False, "reason": reason}, None, msg_id))

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            self._socket.send_multipart([identity, *frames], zmq.NOBLOCK)
        except zmq.Again:                  # the peer does not read its replies: drop this one
            logger.debug("dropped a reply to peer %s (its queue is full)", identity.hex())
