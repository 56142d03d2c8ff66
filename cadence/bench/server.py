"""``cadence bench server``: a valid client's round trips while the robot server is attacked.

One ``cadence robot serve`` process (loopback, a fresh token). A valid :class:`RemoteRobot`
makes round trips, ``observe`` and ``act`` in turn, one every ``period_ms``, each allowed
``timeout_ms``, through three scenarios in a row:

- ``baseline``: nothing else;
- ``large, without the token``: ``big_messages`` other sockets send one ``act`` of ``big_mb`` MB
  each, with a wrong token;
- ``flood without the token``: ``flood`` small requests with a wrong token from ``flood_sockets``
  other sockets, sent as fast as they go.

The attackers hold CURVE keys of the wrong token (:mod:`cadence.hardware.wire_keys`): their
handshakes fail, so what they send never reaches the server's request handling (the server sees
failed handshakes, a few a second per socket as ZeroMQ reconnects).

Each scenario lasts at least ``requests`` round trips and until its attack is over. Reported per
scenario: the client's round-trip p50 / p99 / max, its timeouts and refused requests, the
replies the attackers got, and the server's peak RSS (``VmHWM`` of ``/proc/<pid>/status``,
reset before each scenario through ``/proc/<pid>/clear_refs``). The server is stopped with
SIGTERM at the end. Prints a markdown table and writes ``results.json`` to ``out_dir``.
"""
from __future__ import annotations

import json
import secrets
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zmq
from omegaconf import DictConfig, OmegaConf

from cadence.bench.served_robot import start_server, stop_server
from cadence.hardware.remote_robot import RemoteRobot
from cadence.hardware.robot import RobotError, RobotTimeout
from cadence.hardware.wire import encode
from cadence.hardware.wire_keys import connect_curve, curve_keys
from cadence.markdown_table import markdown_table


def _status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _sockets(endpoint: str, n: int, token: str) -> list[zmq.Socket]:
    sockets = [zmq.Context.instance().socket(zmq.DEALER) for _ in range(n)]
    for s in sockets:
        s.setsockopt(zmq.LINGER, 0)
        connect_curve(s, curve_keys(token.encode()))
        s.connect(endpoint)
    return sockets


def _replies(sockets: list[zmq.Socket], quiet_s: float) -> int:
    """Read replies on ``sockets`` until none came for ``quiet_s``; close them; the count."""
    poller, n = zmq.Poller(), 0
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    while events := poller.poll(quiet_s * 1e3):
        for s, _ in events:
            s.recv_multipart()
            n += 1
    for s in sockets:
        s.close(linger=0)
    return n


def large_messages(endpoint: str, count: int, mb: float, token: str) -> int:
    """``count`` sockets each send one ``act`` of ``mb`` MB (zero-copy from one buffer)."""
    payload = bytes(int(mb * 1e6))
    head = json.dumps({"v": 1, "kind": "act", "id": 1, "token": token, "expires": time.monotonic() + 60,
                       "arrays": {"action": {"dtype": "uint8", "shape": [len(payload)]}}}).encode()
    sockets = _sockets(endpoint, count, token)
    for s in sockets:
        s.send_multipart([head, payload], copy=False)         # queued: the handshake never completes
    return _replies(sockets, quiet_s=2.0)


def flood(endpoint: str, count: int, n_sockets: int, token: str) -> int:
    """``count`` ``observe`` requests with ``token``, spread over ``n_sockets`` sending threads."""
    sockets = _sockets(endpoint, n_sockets, token)

    def send(s: zmq.Socket, n: int) -> None:
        for i in range(n):
            try:
                s.send_multipart(encode("observe", {}, None, i, token), zmq.NOBLOCK)
            except zmq.Again:               # its queue is full: nothing is delivered without the token
                pass

    with ThreadPoolExecutor(n_sockets) as pool:
        list(pool.map(send, sockets, [count // n_sockets + (i < count % n_sockets) for i in range(n_sockets)]))
    return _replies(sockets, quiet_s=0.5)


def scenario(name: str, attack, robot: RemoteRobot, pid: int, cfg: DictConfig) -> dict:
    """Round trips of ``robot`` while ``attack()`` (returning the attackers' replies) runs."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")                                    # reset the peak RSS to the current RSS
    action = np.zeros(robot.spec.action.shape, robot.spec.action.dtype)
    rtts, timeouts, refused, period = [], 0, 0, cfg.period_ms / 1e3
    with ThreadPoolExecutor(1) as pool:
        attacked = pool.submit(attack)
        t_next = time.monotonic()
        while len(rtts) + timeouts + refused < cfg.requests or not attacked.done():
            t0 = time.perf_counter()
            try:
                robot.send_action(action) if (len(rtts) + timeouts + refused) % 2 else robot.latest_observation()
                rtts.append((time.perf_counter() - t0) * 1e3)
            except RobotTimeout:
                timeouts += 1
            except RobotError:
                refused += 1
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
    ms = np.array(rtts) if rtts else np.full(1, np.nan)
    return {"scenario": name, "requests": len(rtts) + timeouts + refused, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "timeouts": timeouts,
            "refused": refused, "attack_replies": attacked.result(),
            "server_peak_rss_mb": _status_mb(pid, "VmHWM")}


def run(cfg: DictConfig) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    token, wrong = secrets.token_hex(16), secrets.token_hex(16)
    server, endpoint = start_server(cfg.task, token, 3600, out / "server.log")
    try:
        idle_mb = _status_mb(server.pid, "VmRSS")
        with RemoteRobot(endpoint, token, timeout_s=cfg.timeout_ms / 1e3, obs_max_age_s=0.0) as robot:
            robot.reset(seed=0)
            attacks = {"baseline": lambda: 0,
                       f"{cfg.big_messages} x {cfg.big_mb:g} MB without the token":
                           lambda: large_messages(endpoint, cfg.big_messages, cfg.big_mb, wrong),
                       f"{cfg.flood} requests without the token":
                           lambda: flood(endpoint, cfg.flood, cfg.flood_sockets, wrong)}
            rows = [scenario(name, attack, robot, server.pid, cfg) for name, attack in attacks.items()]
    finally:
        stop_server(server, signal.SIGTERM, out / "server.log")
    log = (out / "server.log").read_text().splitlines()
    stopped = [line for line in log if line.startswith("cadence robot serve: stopped by")]
    served = [line for line in log if line.startswith("served ")]
    if server.returncode != 0 or not stopped or not served:
        raise RobotError(f"the robot server did not stop cleanly (exit {server.returncode}); see {out / 'server.log'}")
    report = {"command": "cadence bench server " + " ".join(sys.argv[1:]), "settings": OmegaConf.to_container(cfg, enum_to_str=True),
              "server_idle_rss_mb": idle_mb, "scenarios": rows, "server_stop": stopped[-1],
              "server_rejected": int(served[-1].split("rejected ")[1].split()[0])}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(markdown_table(["scenario", "requests", "p50 ms", "p99 ms", "max ms", "timeouts", "refused",
                          "attack replies", "server peak RSS MB"],
                         [[r["scenario"], str(r["requests"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                           f"{r['max_ms']:.2f}", str(r["timeouts"]), str(r["refused"]), str(r["attack_replies"]),
                           f"{r['server_peak_rss_mb']:.0f}"] for r in rows]))
    print(f"valid client: {cfg.timeout_ms:g} ms timeout, a request every {cfg.period_ms:g} ms; server idle RSS "
          f"{idle_mb:.0f} MB, rejected {report['server_rejected']}; {stopped[-1]} -> {out / 'results.json'}")
    return report
