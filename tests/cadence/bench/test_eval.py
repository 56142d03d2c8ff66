"""cadence bench eval: one checkpoint evaluated in one process, in waves, in async workers and over two ranks."""
import json

import pytest

from ..test_cli import cadence
from ..test_distributed_train import TINY

pytestmark = pytest.mark.timeout(600)


@pytest.mark.slow           # 30-50 s; make test-all runs it
def test_every_setup_with_waves_gives_the_same_episodes(tiny_store, tmp_path):
    cadence("train", f"task.dataset={tiny_store}", *TINY, "train.steps=4", "tracking=none", "run_dir=run", cwd=tmp_path)
    out = cadence("bench", "eval", "checkpoint=run", "episodes=4", "batch_size=2", "out_dir=b", cwd=tmp_path).stdout
    rows = json.loads((tmp_path / "b" / "results.json").read_text())["rows"]
    assert [(r["processes"], r["async_envs"], r["episodes_per_wave"], r["waves"]) for r in rows] == [
        (1, False, 4, 1), (1, False, 2, 2), (1, True, 2, 2), (2, False, 2, 2), (2, True, 2, 2)]
    assert [r["same_episodes_as"] for r in rows] == ["1 process, all at once"] + ["1 process, waves"] * 4
    assert rows[0]["speedup"] == 1.0 and all(r["rollout_s"] > 0 and r["command_s"] > r["rollout_s"] for r in rows)
    assert rows[3]["threads_per_process"] == 1 and "| setup" in out and (tmp_path / "b" / "results.md").is_file()


def test_a_setup_without_processes_is_refused_by_name(tmp_path):
    proc = cadence("bench", "eval", "checkpoint=run", "setups=[{name: none, processes: 0}]", "out_dir=b",
                   cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "setups[0] (none): processes must be >= 1, got 0" in proc.stderr
    assert not (tmp_path / "b").exists()
