"""cadence bench success: trains an entry, loads another from its checkpoint, one table + JSON."""
import json

import pytest

from ..test_cli import TINY_POLICY, TINY_TRAIN, cadence

pytestmark = pytest.mark.timeout(600)


def test_trains_and_loads_entries_and_writes_one_table(tmp_path):
    overrides = ", ".join(f"'{o}'" for o in [*TINY_POLICY, *TINY_TRAIN[1:]])   # quoted: they hold '='
    cadence("bench", "success", "collect.episodes=4", "eval.episodes=2", "eval.video_episodes=0", "out_dir=b1",
            f"entries=[{{task: bimodal_reach, policy: diffusion, steps: 7, overrides: [{overrides}]}}]", cwd=tmp_path)
    first = json.loads((tmp_path / "b1" / "results.json").read_text())["rows"][0]
    assert (tmp_path / "data" / "bimodal_reach.zarr").is_dir()          # collected: the store was missing
    assert first["train_steps"] == 7 and first["episodes"] == 2 and first["paper"] is None
    assert first["train_seconds"] > 0 and 0.0 <= first["success"] <= 1.0
    proc = cadence("bench", "success", "eval.episodes=3", "eval.video_episodes=0", "out_dir=b2",
                   f"entries=[{{checkpoint: {first['checkpoint']}, sample_steps: 2}}]", cwd=tmp_path)
    again = json.loads((tmp_path / "b2" / "results.json").read_text())["rows"][0]
    assert again["train_steps"] == 7 and again["episodes"] == 3 and again["sample_steps"] == 2
    assert again["train_seconds"] == first["train_seconds"]              # read back from the checkpoint
    assert "| bimodal_reach | low-dim" in proc.stdout and "diffusion (2 steps)" in proc.stdout
    assert again["obs_keys"] == ["state"]


def test_an_empty_list_is_refused(tmp_path):
    proc = cadence("bench", "success", "entries=[]", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "entries is empty" in proc.stderr + proc.stdout
