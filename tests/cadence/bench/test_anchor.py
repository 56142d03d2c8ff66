"""cadence bench anchor: trains the anchor and diffusion policies, one row per sampler, JSON + markdown."""
import json

import pytest

from ..test_cli import cadence

pytestmark = pytest.mark.timeout(600)

COMMON = ["policy.pred_horizon=8", "policy.exec_horizon=4", "policy.obs_feature_dim=16", "train.warmup_steps=2",
          "train.log_every=3", "train.checkpoint_every=0"]
ANCHOR = [*COMMON, "policy.anchor.num_anchors=4", "policy.anchor.d_model=16", "policy.anchor.n_heads=2",
          "policy.anchor.cond_tokens=2"]
DIFFUSION = [*COMMON, "policy.down_dims=[16,32]", "policy.level_embed_dim=16"]


def _list(items):
    return "[" + ", ".join(f"'{o}'" for o in items) + "]"


def test_anchor_and_ddim_rows_from_one_run(tmp_path):
    proc = cadence("bench", "anchor", "collect.episodes=4", "eval.episodes=2", "steps=4", "batch_size=16",
                   "timing_calls=2", "accuracy_windows=32", "ddim_steps=[3,6]", "out_dir=b",
                   f"anchor_overrides={_list(ANCHOR)}", f"diffusion_overrides={_list(DIFFUSION)}", cwd=tmp_path)
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = result["rows"]
    assert [(r["policy"], r["sampler"], r["denoiser_calls"]) for r in rows] == [
        ("anchor", "1 steps, most confident", 1), ("anchor", "2 steps, most confident", 2),
        ("anchor", "4 steps, most confident", 4), ("anchor", "2 steps, mode drawn", 2),
        ("diffusion", "DDIM-3", 3), ("diffusion", "DDIM-6", 6)]
    assert result["reference"] == "diffusion DDIM-6" and result["num_anchors"] == 4
    ref = rows[-1]
    for r in rows:
        assert r["episodes"] == 2 and 0 <= r["success"] <= 1 and r["ms_per_chunk"] > 0
        assert r["speedup"] == pytest.approx(ref["ms_per_chunk"] / r["ms_per_chunk"], rel=0.02, abs=0.006)   # stored to 2 decimals
        assert r["success_vs_ref"] == pytest.approx(r["success"] - ref["success"])
        assert r["score"] == r["eval"]["mean_max_reward"]
        assert (r["anchor_top1"] is None) == (r["policy"] == "diffusion")
        assert set(r["eval"]["mode_counts"]) >= {"left", "right"}
    assert all(0 <= r["anchor_top1"] <= 1 for r in rows[:4])
    two = rows[1]
    assert result["target_2_steps_met"] == (two["speedup"] >= 5 and two["success_vs_ref"] >= -0.03)
    assert result["train_steps"] == {"anchor": 4, "diffusion": 4}
    assert len({p.name for p in (tmp_path / "b").glob("eval-*")}) == 6     # one evaluation folder per row
    assert "| anchor" in proc.stdout and "DDIM-6" in proc.stdout and "Target" in proc.stdout


def test_no_reference_row_is_refused(tmp_path):
    proc = cadence("bench", "anchor", "ddim_steps=[]", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "ddim_steps" in proc.stderr + proc.stdout
