"""Your own recordings, end to end through the commands a user types: a LeRobot dataset written
with pyarrow and PyAV -> cadence import -> cadence train task=store (no simulator) -> offline
validation -> cadence eval -> cadence export -> cadence run robot=replay on the held-out episodes."""
import json

import numpy as np
import pytest
import yaml

from cadence.cli import main

from ..datasets.lerobot_datasets import FPS, write_v21

SMALL_POLICY = ["policy.pred_horizon=8", "policy.exec_horizon=4", "policy.down_dims=[16,32]",
                "policy.obs_feature_dim=16", "policy.level_embed_dim=16", "policy.image_feature_dim=16",
                "policy.sample_steps=2"]


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(*args):
        monkeypatch.setattr("sys.argv", ["cadence"])
        assert main(list(args)) == 0
    return run


def test_recordings_to_a_rehearsed_policy_without_a_simulator(tmp_path, cli):
    lengths = (9, 11, 10, 8, 11, 9, 10, 11, 8, 10)        # the fixture's frame colours fit 11 steps
    write_v21(tmp_path / "recordings", lengths=lengths)
    cli("import", "format=lerobot", "source=recordings", "out=data/arm.zarr", "image_size=[16,16]")

    cli("train", "task=store", "task.dataset=data/arm.zarr", "train.steps=4", "train.batch_size=8",
        "train.eval_every=0", "train.warmup_steps=1", "train.log_every=2", "tracking=none", "run_dir=runs/arm",
        *SMALL_POLICY)
    ckpt = tmp_path / "runs/arm/checkpoint"
    meta = json.loads((ckpt / "meta.json").read_text())
    task = yaml.safe_load((ckpt / "config.yaml").read_text())["task"]
    assert task["env_id"] is None and task["fps"] == FPS
    assert all(k.startswith("observation.") for k in task["obs_keys"]) and "observation.state" in task["obs_keys"]
    assert meta["obs_shapes"]["observation.images.top"] == [16, 16, 3]
    assert len(meta["val_episodes"]) == 1
    trained = json.loads((tmp_path / "runs/arm/eval-step4/eval.json").read_text())["offline"]
    assert trained["episodes"] == meta["val_episodes"] and trained["steps"] == lengths[meta["val_episodes"][0]]

    cli("eval", "checkpoint=runs/arm", "out_dir=evaluated")
    offline = json.loads((tmp_path / "evaluated/eval.json").read_text())["offline"]
    assert offline["l1"] == pytest.approx(trained["l1"]) and np.isfinite(offline["min_of_k_l1"])

    cli("export", "checkpoint=runs/arm")
    spec = json.loads((tmp_path / "runs/arm/export-onnx/policy.json").read_text())
    assert spec["control"] == {"fps": FPS, "exec_horizon": 4}

    cli("run", "checkpoint=runs/arm", "robot=replay", "control.episodes=1", "control.max_ticks=100",
        "budget.runtimes=[onnx-cpu]", "budget.steps=[2]", "budget.calls=3", "budget.warmup=1",
        "budget.calibration=2", "out_dir=rehearsal")
    summary = json.loads((tmp_path / "rehearsal/summary.json").read_text())
    replay = summary["replay"]
    held_out = lengths[meta["val_episodes"][0]]
    assert summary["ok"] and summary["rate_hz"] == FPS and summary["per_episode"][0]["ticks"] <= held_out + 1
    assert 0 < replay["steps_compared"] <= held_out - 1 and np.isfinite(replay["action_l1"])
    assert replay["steps_compared"] + replay["steps_without_action"] == held_out - 1
