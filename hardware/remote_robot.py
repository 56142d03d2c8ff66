"""A :class:`~cadence.hardware.robot.Robot` served by a :class:`RobotServer` elsewhere.

Each request carries an increasing id and waits at most ``timeout_s`` for its reply (hello and
reset wait longer); otherwise :class:`RobotTimeout` is raised and the caller goes on. A reply
that arrives after its request timed out has an older id and is discarded (``late_replies``).
An ``act`` also carries ``expires``, the server-clock time this client stops waiting for it; the
server refuses it after that, and refuses an act whose id (its sequence number) is not above
the last one it accepted from this connection, so a command never runs late or twice.
An ``error`` reply raises :class:`RobotError` with the server's reason. The socket only queues
requests on a live connection (``ZMQ_IMMEDIATE``), so commands are not stored up while the
server is unreachable and replayed when it comes back. The connection is encrypted and
authenticated with CURVE keys derived from the token (:mod:`cadence.hardware.wire_keys`): with a
wrong token the handshake fails and ``connect`` times out.

One round trip per control tick: every ``act`` reply carries the robot's newest observation,
which is cached. :meth:`latest_observation` answers from the cache while the cached reply is
younger than ``obs_max_age_s`` (default: one robot period, ``1 / spec.rate_hz``) and asks the
server (``observe``) otherwise. A loop that calls ``latest_observation`` then ``send_action``
once per period therefore makes one round trip per tick, at the price of an observation up to
one robot step older than the server's newest; pass ``obs_max_age_s=0`` to always ask.

``t_capture`` is returned on this process's monotonic clock: :meth:`connect` estimates
``clock_offset_s`` (server clock minus local clock) from the hello exchange with the smallest
round trip (its midpoint). On one machine it is ~0.

The server's replies are checked too: the spec in its hello (:func:`~cadence.hardware.wire.check_spec`:
dtypes, sizes, a finite positive rate, finite action bounds), finite times, observations against
the spec. Only the token's holder can act as the server (its CURVE key comes from the token), so
what is not bounded is left to it: a reply of very many frames (libzmq caps each frame, not their
number; at most ``_HWM`` replies are queued).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import zmq
from cadence.hardware.clock import MonotonicClock
from cadence.hardware.robot import Observation, RobotError, RobotSpec, RobotTimeout
from cadence.hardware.wire import (MAX_ARRAY_BYTES, Message, WireError, check_spec, check_token, decode, encode,
                                   observation_from)
from cadence.untrusted import finite_number
from cadence.hardware.wire_keys import FRAME_OVERHEAD, connect_curve, curve_keys

_HWM = 64          # messages queued per direction at most (fewer replies delayed them: libzmq's credit lags)


class RemoteRobot:
    """Talk to a :class:`~cadence.hardware.robot_server.RobotServer` at ``endpoint``.

    Counters: ``round_trips`` (requests answered), ``timeouts``, ``late_replies`` (discarded
    answers to timed-out requests), ``bad_replies`` (undecodable, discarded). ``spec`` is
    ``None`` until :meth:`connect`. Not for concurrent use by several threads beyond a lock
    that serialises requests. ``token`` must have at least ``MIN_TOKEN_BYTES`` bytes
    (:class:`RobotError` otherwise).
    """

    def __init__(self, endpoint: str, token: str, timeout_s: float = 0.05, *,
                 connect_timeout_s: float = 2.0, reset_timeout_s: float = 10.0,
                 obs_max_age_s: float | None = None, clock_samples: int = 5, clock=None):
        check_token(token)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.endpoint, self._token = endpoint, token
        self.timeout_s, self.connect_timeout_s = float(timeout_s), float(connect_timeout_s)
        self.reset_timeout_s = float(reset_timeout_s)
        self.obs_max_age_s = obs_max_age_s
        self.clock_samples = max(1, int(clock_samples))
        self.clock = clock if clock is not None else MonotonicClock()
        self.spec: RobotSpec | None = None   # type: ignore[assignment]  (set by connect)
        self.clock_offset_s = 0.0
        self.rtt_s: float | None = None
        self.round_trips = self.timeouts = self.late_replies = self.bad_replies = 0
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._cached: Observation | None = None
        self._cached_at = -math.inf

    # --- Robot ---------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the socket, say hello (``connect_timeout_s``), read the spec and estimate the
        clock offset. Raises :class:`RobotTimeout` if the server does not answer."""
        if self._socket is not None:
            return
        socket = zmq.Context.instance().socket(zmq.DEALER)
        for option, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.SNDHWM, _HWM),
                              (zmq.RCVHWM, _HWM), (zmq.MAXMSGSIZE, MAX_ARRAY_BYTES + FRAME_OVERHEAD)):   # per frame
            socket.setsockopt(option, value)
        connect_curve(socket, curve_keys(check_token(self._token)))
        if "[" in self.endpoint:
            socket.setsockopt(zmq.IPV6, 1)
        try:
            socket.connect(self.endpoint)
        except zmq.ZMQError as e:
            socket.close(linger=0)
            raise RobotError(f"cannot connect to {self.endpoint!r}: {e}") from e
        self._socket = socket
        try:
            best: tuple[float, float, Message] | None = None
            for _ in range(self.clock_samples):
                t0 = self.clock.now()
                reply = self._request("hello", timeout_s=self.connect_timeout_s)
                t1 = self.clock.now()
                t_server = finite_number(reply.fields.get("t_server"))
                if t_server is None or not math.isfinite(t_server - (t0 + t1) / 2):
                    raise RobotError(f"{self.endpoint}: hello reply without a finite t_server")
                if best is None or t1 - t0 < best[0]:
                    best = (t1 - t0, t_server - (t0 + t1) / 2, reply)
            assert best is not None
            self.rtt_s, self.clock_offset_s = best[0], best[1]
            try:
                self.spec = check_spec(RobotSpec.from_json(best[2].fields["spec"]))
            except WireError as e:
                raise RobotError(f"{self.endpoint}: bad spec in hello reply: {e.reason}") from None
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
                raise RobotError(f"{self.endpoint}: bad spec in hello reply: {e!r}"[:300]) from None
            if self.obs_max_age_s is None:
                self.obs_max_age_s = 1.0 / self.spec.rate_hz
        except BaseException:
            self._close_socket()
            raise

    def reset(self, seed: int | None = None) -> Observation:
        reply = self._request("reset", {"seed": seed}, timeout_s=self.reset_timeout_s)
        obs = self._take_observation(reply)
        if obs is None:
            raise RobotError(f"{self.endpoint}: reset reply without an observation")
        return obs

    def latest_observation(self) -> Observation | None:
        """The cached observation if younger than ``obs_max_age_s``, else the server's newest
        (one ``observe`` round trip; :class:`RobotTimeout` if it does not come in time)."""
        self._require_connected()
        if self._cached is not None and self.clock.now() - self._cached_at < self.obs_max_age_s:
            return self._cached
        obs = self._take_observation(self._request("observe"))
        return obs if obs is not None else self._cached

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Send ``action`` (cast to the spec's dtype); returns the action the robot applied.
        A wrong shape or non-finite value raises :class:`RobotError` without sending."""
        spec = self._require_connected()
        try:
            a = np.asarray(action, dtype=spec.action.dtype)
        except (TypeError, ValueError) as e:
            raise RobotError(f"action is not numeric: {e}") from e
        if a.shape != tuple(spec.action.shape):
            raise RobotError(f"action shape {a.shape} != {tuple(spec.action.shape)}")
        # The server refuses the command once this client has stopped waiting for it: a late
        # command must not move the robot after the loop has moved on (server clock).
        expires = self.clock.now() + self.clock_offset_s + self.timeout_s
        reply = self._request("act", fields={"expires": expires}, arrays={"action": a})
        applied = reply.arrays.get("applied")
        if applied is None or applied.shape != a.shape:
            raise RobotError(f"{self.endpoint}: act reply without a valid applied action")
        self._take_observation(reply)
        return applied

    def hold(self) -> None:
        self._request("hold")

    def disconnect(self) -> None:
        """Say bye (not waiting longer than ``timeout_s``) and close the socket. Idempotent."""
        if self._socket is None:
            return
        try:
            self._request("bye")
        except RobotError:
            pass
        finally:
            self._close_socket()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # --- transport -----------------------------------------------------------------------
    def _require_connected(self) -> RobotSpec:
        if self._socket is None or self.spec is None:
            raise RobotError(f"RemoteRobot({self.endpoint}) is not connected")
        return self.spec

    def _close_socket(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
                self._cached, self._cached_at = None, -math.inf

    def _take_observation(self, reply: Message) -> Observation | None:
        try:
            obs = observation_from(reply, self.spec.observation if self.spec else None,
                                   self.clock_offset_s)
        except WireError as e:
            raise RobotError(f"{self.endpoint}: bad observation in {reply.kind} reply: {e.reason}") from e
        if obs is not None:
            self._cached, self._cached_at = obs, self.clock.now()
        return obs

    def _request(self, kind: str, fields: Mapping[str, Any] | None = None,
                 arrays: Mapping[str, np.ndarray] | None = None,
                 timeout_s: float | None = None) -> Message:
        """Send one request and wait for the reply with its id, at most ``timeout_s``."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            socket = self._socket
            if socket is None:
                raise RobotError(f"RemoteRobot({self.endpoint}) is not connected")
            self._next_id += 1
            msg_id = self._next_id
            try:
                frames = encode(kind, fields, arrays, msg_id, self._token)
            except WireError as e:
                raise RobotError(f"{kind} not sent: {e.reason}") from e
            deadline = self.clock.now() + timeout_s
            # IMMEDIATE: with no live connection nothing is queued; wait for one until the deadline
            while True:
                try:
                    socket.send_multipart(frames, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    remaining = deadline - self.clock.now()
                    if remaining <= 0:
                        self.timeouts += 1
                        raise RobotTimeout(f"{self.endpoint}: cannot send {kind} (no connection) within "
                                           f"{timeout_s * 1e3:.0f} ms: is the server running there, with "
                                           "the same token? (connections are authenticated by it)") from None
                    socket.poll(max(1, math.ceil(remaining * 1e3)), zmq.POLLOUT)
            while True:
                remaining = deadline - self.clock.now()
                if remaining <= 0:
                    self.timeouts += 1
                    raise RobotTimeout(f"{self.endpoint}: no reply to {kind} #{msg_id} "
                                       f"within {timeout_s * 1e3:.0f} ms")
                if not socket.poll(max(1, math.ceil(remaining * 1e3)), zmq.POLLIN):
                    continue
                try:
                    reply = decode(socket.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    continue
                except WireError:
                    self.bad_replies += 1
                    continue
                if reply.id != msg_id:
                    if 0 < reply.id < msg_id:
                        self.late_replies += 1
                    else:
                        self.bad_replies += 1
                    continue
                self.round_trips += 1
                if reply.kind == "error":
                    raise RobotError(f"{self.endpoint} refused {kind}: {reply.fields.get('reason')}")
                if reply.kind != kind or reply.fields.get("ok") is not True:
                    raise RobotError(f"{self.endpoint}: {kind} answered by {reply.kind!r}")
                return reply
