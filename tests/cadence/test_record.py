"""``cadence record`` as a user runs it, in simulation with the scripted teleoperator: episodes
appended one by one, the store trains like any other, a killed recording keeps what was kept."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cadence.datasets.episode_store import EpisodeStore

from .test_cli import TINY_POLICY, TINY_TRAIN, cadence

pytestmark = pytest.mark.timeout(300)
FAST = ["task.fps=50", "task.dataset=rec.zarr"]      # the simulated robot at 5x real time


def test_record_appends_episodes_that_train(tmp_path):
    out = cadence("record", "record.episodes=3", *FAST, cwd=tmp_path).stdout
    assert "recorded 3 episodes into rec.zarr (now 3 episodes" in out
    again = cadence("record", "record.episodes=2", *FAST, cwd=tmp_path).stdout
    assert "recorded 2 episodes into rec.zarr (now 5 episodes" in again
    store = EpisodeStore.open(tmp_path / "rec.zarr")
    assert store.n_episodes == 5 and store.fps == 50
    first, last = store.episode(0, ["state", "action", "timestamp"]), store.episode(4, ["state", "action"])
    assert first["action"].shape[1] == 2 and np.all(np.diff(first["timestamp"]) > 0)
    assert not np.allclose(first["state"][0], last["state"][0])      # later recordings continue the seeds
    cadence("train", "run_dir=runs/rec", *FAST, *TINY_POLICY, *TINY_TRAIN, "eval.episodes=0", cwd=tmp_path)
    assert (tmp_path / "runs" / "rec" / "checkpoint").is_dir()


def test_a_store_at_another_rate_is_refused_before_recording(tmp_path):
    cadence("record", "record.episodes=1", *FAST, cwd=tmp_path)
    proc = cadence("record", "record.episodes=1", "task.dataset=rec.zarr", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "rec.zarr: holds episodes recorded at 50 fps" in proc.stderr


def test_sigterm_keeps_the_episodes_already_written(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cadence.cli", "record", "record.episodes=1000", *FAST],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "rec.zarr" / "meta").is_dir():
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "stopped by SIGTERM" in out
    store = EpisodeStore.open(tmp_path / "rec.zarr")
    assert store.n_episodes >= 1 and f"now {store.n_episodes} episodes" in out
