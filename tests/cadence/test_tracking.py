"""MetricsLogger: metrics.jsonl always, a real Weights & Biases offline run beside it when asked."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cadence.envs.video import save_video
from cadence.tracking import LATENCY_COLUMNS, MetricsLogger


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _evaluation(run, step, ms):
    frames = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(3)]
    return {"success_rate": 0.5, "n_episodes": 2, "sample_steps": 4, "ms_per_chunk": ms, "ms_per_chunk_p90": ms + 1,
            "mode_shares": {"left": 1.0}, "video": str(save_video(frames, run / f"v{step}.gif", fps=10))}


def test_offline_run_holds_the_metrics_video_and_latency_table(tmp_path):
    metrics = MetricsLogger(tmp_path, "offline", config={"train": {"steps": 4}}, name="t")
    metrics.log({"loss": np.float32(0.5), "lr": 1e-3, "note": "text"}, step=2)
    metrics.log_evaluation(_evaluation(tmp_path, 2, 3.0), step=2)
    metrics.log_evaluation(_evaluation(tmp_path, 4, 2.5), step=4)
    wandb_dir = metrics.wandb_dir
    metrics.close()

    records = _records(tmp_path)
    assert records[0]["loss"] == 0.5 and records[0]["note"] == "text"
    evals = [r for r in records if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [2, 4] and "eval/mode_shares" not in evals[0]   # numbers only
    tables = [r["eval/latency"] for r in records if "eval/latency" in r]
    assert tables[-1] == {"columns": list(LATENCY_COLUMNS), "rows": [[2, 4, 3.0, 4.0, 0.5], [4, 4, 2.5, 3.5, 0.5]]}
    assert [r["eval/rollouts"] for r in records if "eval/rollouts" in r] == [str(tmp_path / "v2.gif"),
                                                                             str(tmp_path / "v4.gif")]

    assert wandb_dir.parent == tmp_path / "wandb" and wandb_dir.name.startswith("offline-run-")
    assert list(wandb_dir.glob("run-*.wandb"))
    assert len(list(wandb_dir.glob("files/media/videos/eval/rollouts_*.gif"))) == 2
    latest = max(wandb_dir.glob("files/media/table/eval/latency_*.table.json"), key=lambda p: p.stat().st_mtime)
    table = json.loads(latest.read_text())
    assert table["columns"] == list(LATENCY_COLUMNS) and len(table["data"]) == 2


def test_none_writes_only_metrics_jsonl(tmp_path):
    metrics = MetricsLogger(tmp_path, "none")
    metrics.log_evaluation(_evaluation(tmp_path, 1, 1.0), step=1)
    metrics.close()
    assert metrics.wandb_dir is None and not (tmp_path / "wandb").exists()
    assert {"eval/success_rate", "eval/rollouts", "eval/latency"} <= {k for r in _records(tmp_path) for k in r}


def test_unknown_mode_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="tracking.mode.*'offlne'"):
        MetricsLogger(tmp_path, "offlne")
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_relative_run_dir_is_the_callers_even_with_a_running_wandb_service(tmp_path):
    # This process's W&B service (its address inherited by child processes) runs in another cwd.
    MetricsLogger(tmp_path / "first", "offline").close()
    here = tmp_path / "here"
    here.mkdir()
    code = ("from pathlib import Path; from cadence.tracking import MetricsLogger; "
            "m = MetricsLogger(Path('rel'), 'offline'); m.log({'loss': 1.0}, 1); print('hello'); m.close()")
    subprocess.run([sys.executable, "-c", code], cwd=here, check=True, capture_output=True, timeout=120)
    runs = list((here / "rel" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (runs[0] / "files" / "output.log").is_file() and list(runs[0].glob("run-*.wandb"))
