"""cadence bench offline: the rank correlation, and one tiny run through the command."""
import json
import math

import pytest

from cadence.bench.offline import spearman
from cadence.cli import main


def test_spearman_orders_not_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their mean rank: ranks [0.5, 0.5, 2, 3] against [0, 1, 2, 3]
    assert spearman([5, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_one_run_gives_both_numbers_per_checkpoint_and_import_rates(tiny_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["cadence"])
    assert main(["bench", "offline", "task_name=bimodal_reach", "steps=6", "checkpoints=3", "val_episodes=2",
                 "eval.episodes=2", "eval.offline_samples=2", "import_episodes=2", "import_frames=12",
                 "video_size=[48,64]", "image_size=[16,16]", "out_dir=bench",
                 f'overrides=["task.dataset={tiny_store}","train.batch_size=16","train.warmup_steps=1",'
                 '"policy.down_dims=[16,32]","policy.pred_horizon=8","policy.exec_horizon=4","policy.sample_steps=2"]'
                 ]) == 0
    result = json.loads((tmp_path / "bench/results.json").read_text())
    assert [r["step"] for r in result["rows"]] == [2, 4, 6]
    for row in result["rows"]:
        assert 0 <= row["success"] <= 1 and math.isfinite(row["offline_l1"]) and row["min_of_k_l1"] <= row["offline_l1"] + 1e-9
    assert [r["frames"] for r in result["import"]] == [24, 24] and all(r["frames_per_s"] > 0 for r in result["import"])
