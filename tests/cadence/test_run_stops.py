"""``cadence run`` stops cleanly: on the signals a supervisor sends, when its robot server dies,
and never drives the robot with a broken export (real processes, real sockets, real ONNX files)."""
import json
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

from cadence.cache_file import weights_sha256
from cadence.checkpoint import load_policy
from cadence.deploy.export_spec import read_spec
from cadence.run import current_export
from tests.conftest import train_tiny_run

pytestmark = pytest.mark.timeout(600)

BUDGET = ["budget.runtimes=[torch-eager]", "budget.steps=[2]", "budget.calibration=2", "budget.calls=2",
          "budget.warmup=1"]


@pytest.fixture(scope="module")
def run_dir(tiny_store, tmp_path_factory):
    return train_tiny_run(tiny_store, tmp_path_factory.mktemp("stops") / "run")


def _cadence(*args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "cadence.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=240.0):
    """Until ``path`` exists (the run is past its budget selection), or fail with the output."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{path} never appeared:\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_holds_the_robot_writes_the_logs_and_exits(run_dir, tmp_path, sig):
    out = tmp_path / "deploy"
    proc = _cadence("run", f"checkpoint={run_dir}", *BUDGET, "control.episodes=100", "control.max_ticks=300",
                    f"out_dir={out}", cwd=tmp_path)
    _wait_for(out / "budget.json", proc)
    time.sleep(2.0)                                    # inside the first episode
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, err
    assert f"cadence run: stopped by {name}; the robot was held and the logs written" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing"]["ticks"] > 0 and summary["episodes"] < 100
    assert (out / "ticks.jsonl").read_text().count("\n") >= summary["timing"]["ticks"]


def test_a_dead_robot_server_stops_the_run_within_a_few_periods(run_dir, tmp_path):
    token = secrets.token_hex(16)
    env = {**os.environ, "CADENCE_ROBOT_TOKEN": token}
    server = _cadence("robot", "serve", "robot.endpoint=tcp://127.0.0.1:*", "max_seconds=300", cwd=tmp_path, env=env)
    try:
        line = server.stdout.readline()
        assert "serving" in line, line + server.stderr.read()
        endpoint = line.split(" on ")[1].split()[0]
        out = tmp_path / "deploy"
        proc = _cadence("run", f"checkpoint={run_dir}", "robot=remote", f"robot.endpoint={endpoint}", *BUDGET,
                        "control.episodes=100", "control.max_ticks=300", f"out_dir={out}", cwd=tmp_path, env=env)
        _wait_for(out / "budget.json", proc)
        time.sleep(2.0)
        server.kill()                                  # the robot computer is gone, without a word
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - killed
    finally:
        server.kill()
        server.communicate()
    assert proc.returncode == 1, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("cadence run: error:")]
    assert lines and ("lost the robot" in lines[-1] or "timed out" in lines[-1]), err
    assert "Traceback" not in err
    assert stopped_after < 10.0                        # a few 100 ms periods and request timeouts, not an episode
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["robot"]["token"] is None                     # given by the environment, not stored
    assert token not in (out / "summary.json").read_text()


def test_the_token_given_on_the_command_line_never_reaches_the_summary(run_dir, tmp_path):
    token = secrets.token_hex(16)
    out = tmp_path / "deploy"
    proc = _cadence("run", f"checkpoint={run_dir}", *BUDGET, "control.episodes=1", "control.max_ticks=5",
                    f"robot.token={token}", f"out_dir={out}", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    text = (out / "summary.json").read_text()
    assert token not in text and json.loads(text)["config"]["robot"]["token"] == "<redacted>"


def test_an_export_of_other_weights_is_replaced(run_dir):
    ckpt = run_dir / "checkpoint"
    policy, cfg, meta = load_policy(ckpt)
    export = current_export(policy, ckpt, meta, cfg)
    assert read_spec(export)["source"]["weights_sha256"] == weights_sha256(ckpt)
    assert read_spec(export)["control"] == {"fps": cfg.task.fps, "exec_horizon": cfg.policy.exec_horizon}
    stamp = (export / "denoiser.onnx").stat().st_mtime_ns
    assert current_export(policy, ckpt, meta, cfg) == export and (export / "denoiser.onnx").stat().st_mtime_ns == stamp
    spec = json.loads((export / "policy.json").read_text())
    spec["source"]["weights_sha256"] = "0" * 64         # the same step, but not these weights
    (export / "policy.json").write_text(json.dumps(spec))
    current_export(policy, ckpt, meta, cfg)
    assert read_spec(export)["source"]["weights_sha256"] == weights_sha256(ckpt)
    assert (export / "denoiser.onnx").stat().st_mtime_ns != stamp


def test_a_tampered_export_is_refused_by_the_budget_and_never_chosen(run_dir, tmp_path):
    ckpt = run_dir / "checkpoint"
    policy, cfg, meta = load_policy(ckpt)
    export = current_export(policy, ckpt, meta, cfg)
    spec = json.loads((export / "policy.json").read_text())
    spec["action_normalizer"]["scale"] = [s * 1e-3 for s in spec["action_normalizer"]["scale"]]   # valid, wrong
    (export / "policy.json").write_text(json.dumps(spec))          # the hash still matches: reused as is
    out = tmp_path / "deploy"
    proc = _cadence("run", f"checkpoint={run_dir}", "budget.runtimes=[torch-eager,onnx-cpu]", *BUDGET[1:],
                    "control.episodes=1", "control.max_ticks=5", f"out_dir={out}", cwd=tmp_path)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    budget = json.loads((out / "budget.json").read_text())
    onnx = [c for c in budget["candidates"] if c["kind"] == "onnx-cpu"]
    assert onnx and not any(c["fits"] for c in onnx) and all("action error" in c["failure"] for c in onnx)
    assert budget["chosen"]["kind"] == "torch-eager"
    current_export(policy, ckpt, meta, cfg)            # leave a sound export for the other tests
