"""The robot server's connections, encrypted and authenticated in ZeroMQ's CURVE handshake, with
keys both ends derive from the one shared token (nothing new to configure or copy around).

From the token come two CURVE key pairs (a domain-separated SHA-256 of it as each secret key):

- the server's: the server's socket is a CURVE server with it; a client must know its public key
  to open a connection at all, and it never travels on the wire;
- the client's: the server's ZAP handler admits only this public key.

So a peer without the token never completes the handshake: it gets no reply, and nothing it sends
reaches the server's request handling (one unauthenticated message of 10^6 empty frames held
about 400 MB of the server before). Every message is encrypted with the connection's session
keys: the token in a request no longer travels in the clear, and a captured message cannot be
replayed on another connection. The token's own strength (at least 16 bytes; ``secrets.token_hex
(16)`` gives 128 bits) is the strength of the keys.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

ZAP_DOMAIN = b"cadence-robot"
# libzmq compares ZMQ_MAXMSGSIZE with a frame as it arrives: under CURVE a MESSAGE command, its
# plaintext plus 33 bytes (command name, nonce, MAC, flags)
FRAME_OVERHEAD = 64


@dataclass(frozen=True)
class CurveKeys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes


def curve_keys(token: bytes) -> CurveKeys:
    """The key pairs of ``token`` (its UTF-8 bytes, as :func:`~cadence.hardware.wire.check_token`
    returns them), Z85-encoded as ZeroMQ takes them."""
    def pair(role: bytes) -> tuple[bytes, bytes]:
        secret = z85.encode(hashlib.sha256(b"cadence robot server curve key\0" + role + b"\0" + token).digest())
        return zmq.curve_public(secret), secret

    (server_public, server_secret), (client_public, client_secret) = pair(b"server"), pair(b"client")
    return CurveKeys(server_public, server_secret, client_public, client_secret)


class _OneClient:
    """ZAP's CURVE check: the one client public key the token gives."""

    def __init__(self, public: bytes):
        self.public = public

    def callback(self, domain: str, key: bytes) -> bool:      # pyzmq passes the key Z85-encoded
        return key == self.public


def serve_curve(socket: zmq.Socket, context: zmq.Context, keys: CurveKeys) -> ThreadAuthenticator:
    """Make ``socket`` (not yet bound) a CURVE server admitting only the token's client; returns
    the ZAP handler running on ``context`` (stop it when the socket is closed)."""
    auth = ThreadAuthenticator(context, log=logging.getLogger("cadence.robot_server.zap"))
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN.decode(), credentials_provider=_OneClient(keys.client_public))
    socket.curve_server = True
    socket.curve_secretkey = keys.server_secret
    socket.curve_publickey = keys.server_public
    socket.zap_domain = ZAP_DOMAIN
    return auth


def connect_curve(socket: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``socket`` (not yet connected) a CURVE client of the token's server."""
    socket.curve_serverkey = keys.server_public
    socket.curve_publickey = keys.client_public
    socket.curve_secretkey = keys.client_secret
