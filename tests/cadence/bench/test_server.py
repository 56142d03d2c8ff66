"""`cadence bench server` with tiny settings: a real server process, real attacks, the results file."""
import json

import pytest

from ..test_cli import cadence

pytestmark = pytest.mark.timeout(300)


def test_bench_server_writes_a_row_per_scenario_and_stops_the_server_cleanly(tmp_path):
    proc = cadence("bench", "server", "requests=20", "period_ms=5", "timeout_ms=2000", "big_messages=3", "big_mb=2",
                   "flood=60", "flood_sockets=2", "out_dir=bench", cwd=tmp_path)
    report = json.loads((tmp_path / "bench" / "results.json").read_text())
    rows = {r["scenario"]: r for r in report["scenarios"]}
    assert list(rows) == ["baseline", "3 x 2 MB without the token", "60 requests without the token"]
    for r in rows.values():
        assert r["requests"] >= 20 and r["timeouts"] == 0 and r["refused"] == 0
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] < 2000
        assert r["server_peak_rss_mb"] >= 0.9 * report["server_idle_rss_mb"] > 0    # the server's, after the reset
    assert all(r["attack_replies"] == 0 for r in rows.values())          # no handshake, no reply
    assert report["server_rejected"] == 0                                  # nothing reached the request checks
    assert report["server_stop"] == "cadence robot serve: stopped by SIGTERM; robot held"
    assert report["settings"]["flood"] == 60 and report["command"].startswith("cadence bench server requests=20")
    assert "| baseline" in proc.stdout and "server peak RSS MB" in proc.stdout
