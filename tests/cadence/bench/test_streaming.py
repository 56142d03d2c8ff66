"""cadence bench streaming: trains the streaming and diffusion policies, one row per sampler, JSON + markdown."""
import json

import pytest

from .test_anchor import _list
from ..test_cli import cadence

pytestmark = pytest.mark.timeout(600)

COMMON = ["policy.obs_feature_dim=16", "policy.down_dims=[16,32]", "policy.level_embed_dim=16", "train.warmup_steps=2",
          "train.log_every=3", "train.checkpoint_every=0"]


def test_streaming_and_diffusion_rows_from_one_run(tmp_path):
    proc = cadence("bench", "streaming", "collect.episodes=4", "eval.episodes=2", "steps=4", "batch_size=16",
                   "timing_calls=2", "streaming_steps=[1,2]", "ddim_steps=[20,10]", "reference_steps=10", "out_dir=b",
                   f"streaming_overrides={_list([*COMMON, 'policy.streaming.start_steps=3'])}",
                   f"diffusion_overrides={_list(COMMON)}", cwd=tmp_path)
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = result["rows"]
    assert [(r["policy"], r["sampler"], r["denoiser_calls"], r["first_replan_calls"]) for r in rows] == [
        ("streaming", "1 calls per replan", 1, 3 + 1), ("streaming", "2 calls per replan", 2, 3 + 2),
        ("diffusion", "DDIM-20", 20, 20), ("diffusion", "DDIM-10", 10, 10)]
    assert result["reference"] == "diffusion DDIM-10" and result["chunks"] == 2
    ref = rows[-1]
    for r in rows:
        assert r["episodes"] == 2 and 0 <= r["success"] <= 1 and r["ms_per_chunk"] > 0
        assert r["speedup"] == pytest.approx(ref["ms_per_chunk"] / r["ms_per_chunk"], rel=0.02, abs=0.006)   # stored to 2 decimals
        assert r["success_vs_ref"] == pytest.approx(r["success"] - ref["success"])
    assert result["target_met"] == any(r["success_vs_ref"] >= -0.03 for r in rows[:2])
    assert "| streaming" in proc.stdout and "Target" in proc.stdout


def test_reference_must_be_a_diffusion_row(tmp_path):
    proc = cadence("bench", "streaming", "ddim_steps=[100]", "reference_steps=10", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "reference_steps" in proc.stderr + proc.stdout
