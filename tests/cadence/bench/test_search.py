"""cadence bench search: one checkpoint, rows for K candidates per verifier (the oracle's per lookahead)
and for more steps, on the same seeds; table, JSON and plot."""
import json

import pytest
from omegaconf import OmegaConf

from cadence.bench.config import BenchSearchApp
from cadence.bench.search import run
from tests.conftest import train_tiny_run


def bench_config(checkpoint, out_dir, **overrides):
    return OmegaConf.merge(OmegaConf.structured(BenchSearchApp), {
        "checkpoint": str(checkpoint), "out_dir": str(out_dir), "candidates": [1, 4], "verifiers": ["oracle", "consensus"],
        "steps": [8], "timing_calls": 2, "device": "cpu", "eval": {"episodes": 4}, **overrides})


def test_rows_for_candidates_per_verifier_and_for_more_steps(tiny_store, tmp_path):
    run_dir = train_tiny_run(tiny_store, tmp_path / "run")
    result = run(bench_config(run_dir, tmp_path / "b", trust=[1.0, 0.5], lookahead_chunks=[0, 1]), progress=False)
    rows = result["rows"]
    assert [(r["row"], r["verifier"], r["candidates"], r["trust"], r["lookahead"], r["steps"]) for r in rows] == [
        ("plain", "-", 1, 1.0, 0, 4), ("candidates", "oracle", 4, 1.0, 0, 4), ("candidates", "oracle", 4, 1.0, 1, 4),
        ("candidates", "oracle", 4, 0.5, 0, 4), ("candidates", "oracle", 4, 0.5, 1, 4),
        ("candidates", "consensus", 4, 1.0, 0, 4), ("candidates", "consensus", 4, 0.5, 0, 4),
        ("steps", "-", 1, 1.0, 0, 8)]
    plain = rows[0]
    for r in rows:
        assert r["episodes"] == 4 and r["ms_per_chunk"] > 0
        assert r["success_vs_plain"] == pytest.approx(r["success"] - plain["success"])
    assert json.loads((tmp_path / "b" / "results.json").read_text())["rows"] == rows
    assert (tmp_path / "b" / "success_vs_ms.png").stat().st_size > 1000
    assert "| candidates | oracle" in (tmp_path / "b" / "results.md").read_text()


def test_an_unknown_verifier_is_refused_before_any_evaluation(tiny_store, tmp_path):
    run_dir = train_tiny_run(tiny_store, tmp_path / "run")
    with pytest.raises(ValueError, match="search.verifier"):
        run(bench_config(run_dir, tmp_path / "b", verifiers=["psychic"]), progress=False)
    assert not (tmp_path / "b" / "results.json").exists()
