"""cadence bench mode: trains MoDE and its dense twin, three rows, expert usage, JSON + markdown."""
import json

import pytest

from ..test_cli import cadence

pytestmark = pytest.mark.timeout(600)

TINY = ["policy.pred_horizon=8", "policy.exec_horizon=4", "policy.obs_feature_dim=16", "policy.sample_steps=4",
        "policy.transformer.d_model=16", "policy.transformer.n_layers=2", "policy.transformer.n_heads=2",
        "train.warmup_steps=2", "train.log_every=3", "train.checkpoint_every=0"]


def test_dense_and_mode_rows_from_one_run(tmp_path):
    overrides = ", ".join(f"'{o}'" for o in TINY)
    proc = cadence("bench", "mode", "collect.episodes=4", "eval.episodes=2", "steps=5", "batch_size=16", "experts=4",
                   "top_k=1", "timing_calls=2", "out_dir=b", f"overrides=[{overrides}]", cwd=tmp_path)
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    dense, uncached, cached = result["rows"]
    assert [r["policy"] for r in result["rows"]] == ["dense transformer", "MoDE uncached", "MoDE cached"]
    # equal total parameters up to the routers; one expert of four read per call
    routers = 2 * (16 * 32 + 32 + 32 * 4 + 4)
    assert uncached["params"] - dense["params"] == routers
    expert = 3 * 16 * 64
    assert uncached["active_params"] == uncached["params"] - 2 * 3 * expert
    assert cached["active_params"] < uncached["active_params"]
    assert cached["flops_per_call"] < uncached["flops_per_call"] < dense["flops_per_call"]
    assert cached["flops_per_chunk"] < dense["flops_per_chunk"]
    assert result["flops_saved_vs_dense"] == pytest.approx(1 - cached["flops_per_chunk"] / dense["flops_per_chunk"],
                                                           abs=1e-4)
    assert result["max_abs_action_gap_cached_vs_uncached"] < 1e-4
    assert all(r["episodes"] == 2 and 0 <= r["success"] <= 1 and r["ms_per_chunk"] > 0 for r in result["rows"])
    usage = result["expert_usage"]
    assert len(usage["levels"]) == 4 and len(usage["layers"]) == 2 and all(len(s) == 1 for s in usage["layers"][0])
    assert result["train_steps"] == {"dense": 5, "mode": 5}
    assert "| MoDE cached" in proc.stdout and "Experts routed to at each sampling step" in proc.stdout


def test_bad_expert_counts_are_refused(tmp_path):
    proc = cadence("bench", "mode", "experts=2", "top_k=2", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "top_k" in proc.stderr + proc.stdout
