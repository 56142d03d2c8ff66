"""cadence bench cache: one trained transformer, none / uniform / shared / bac rows per sampler and M."""
import json

import pytest

from ..test_cli import cadence

pytestmark = pytest.mark.timeout(600)

TINY = ["policy.pred_horizon=8", "policy.exec_horizon=4", "policy.obs_feature_dim=16",
        "policy.transformer.d_model=16", "policy.transformer.n_layers=2", "policy.transformer.n_heads=2",
        "train.warmup_steps=2", "train.log_every=3", "train.checkpoint_every=0"]


def test_rows_from_one_run(tmp_path):
    overrides = ", ".join(f"'{o}'" for o in TINY)
    proc = cadence("bench", "cache", "collect.episodes=4", "eval.episodes=2", "steps=4", "batch_size=16",
                   "samplers=[6,3]", "budgets=[[2,3],[1]]", "calibration=5", "error_observations=3",
                   "bubbling_blocks=1", "timing_calls=2", "out_dir=b", f"overrides=[{overrides}]", cwd=tmp_path)
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = result["rows"]
    caches = ["none"] + ["uniform", "shared", "bac (acs only)", "bac", "uniform (= bac cost)"] * 2
    assert [r["cache"] for r in rows[:11]] == caches and [r["M"] for r in rows[:3]] == [6, 2, 2]
    assert [r["cache"] for r in rows[11:]] == ["none", "uniform", "shared", "bac (acs only)", "bac",
                                                "uniform (= bac cost)"]
    assert {r["sampler"] for r in rows} == {"DDIM-6", "DDIM-3"} and result["branches"] == 4
    none = rows[0]
    assert none["action_error"] == 0 and none["speedup"] == 1 and none["branch_evaluations"] == 4 * 6
    for r in rows:
        if r["cache"] in ("uniform", "shared", "bac (acs only)"):      # exactly M per branch
            assert r["branch_evaluations"] == 4 * r["M"]
            assert r["flops_per_chunk"] < next(n for n in rows if n["cache"] == "none"
                                               and n["sampler"] == r["sampler"])["flops_per_chunk"]
        if r["cache"] == "bac":
            assert r["branch_evaluations"] >= 4 * r["M"] and len(r["bubbled"]) == 1
        assert r["episodes"] == 2 and r["ms_per_chunk"] > 0 and r["action_error"] >= 0
    assert all(0 <= r["score"] <= 1 for r in rows)
    assert "| DDIM-6" in proc.stdout and "uniform (= bac cost)" in (tmp_path / "b" / "results.md").read_text()


def test_mismatched_budgets_are_refused(tmp_path):
    proc = cadence("bench", "cache", "samplers=[100,10]", "budgets=[[10]]", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "one list of M per sampler" in proc.stderr + proc.stdout


def test_the_task_is_chosen_like_in_train(tmp_path):
    proc = cadence("bench", "cache", "task=pusht", "--cfg", "job", cwd=tmp_path)
    assert "name: pusht" in proc.stdout and "pusht_cchi_v7_replay.zarr" in proc.stdout
