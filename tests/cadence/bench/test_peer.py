"""cadence bench peer: cadence's worker on a small case, the table's arithmetic, the missing peer
environment, and (slow, where `make peer-env` has built it) the whole benchmark against LeRobot."""
import json
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cadence.bench import peer
from cadence.bench.peer_cadence import main as cadence_worker
from cadence.bench.peer_cases import CASES
from cadence.deploy.export_spec import read_spec

from ..test_cli import cadence

pytestmark = pytest.mark.timeout(600)
SMALL = {**CASES["lowdim"], "down_dims": [16, 32], "level_embed_dim": 16}
PEER_PYTHON = Path(__file__).resolve().parents[3] / ".venv-peer" / "bin" / "python"


def test_cadence_worker_times_every_runtime_and_measures_its_error(tmp_path):
    cfg = OmegaConf.create({"seed": 0, "steps": [4, 12], "int8_max_error": 0.005, "threads": 1})
    export = peer._export(SMALL, cfg, tmp_path / "onnx", int8=True, loop=False)
    assert set(read_spec(export)["int8"]["last_steps"]) == {"4", "12"}
    result = cadence_worker({"case": SMALL, "steps": [4, 12], "chunks": 5, "threads": 1, "seed": 0,
                             "runtimes": ["torch-eager", "torch-precond", "onnx-cpu", "onnx-cpu-precond",
                                          "onnx-cpu-int8"],
                             "export_dir": str(export), "train_batches": 2, "batch_size": 4})
    rows = {(r["runtime"], r["steps"]): r for r in result["rows"]}
    assert len(rows[("onnx-cpu", 4)]["ms_per_chunk"]) == 5 and len(rows[("onnx-cpu", 12)]["ms_per_chunk"]) == 1
    assert rows[("torch-eager", 4)]["max_error"] == 0.0                 # the reference against itself
    for (kind, steps), row in rows.items():
        exact = kind != "onnx-cpu-int8"     # fitted on other windows than the one timed: near the bound, not under it
        assert row["max_error"] < (1e-4 if exact else 0.05) and row["mean_error"] <= row["max_error"], (kind, steps)
        assert all(ms > 0 for ms in row["ms_per_chunk"])
    assert len(result["train_samples_per_s"]) == 2 and result["params"] > 0


@pytest.mark.slow
def test_cadence_worker_times_the_loop_graph_at_the_steps_it_has_one_for(tmp_path):
    cfg = OmegaConf.create({"seed": 0, "steps": [4, 40], "threads": 1})
    export = peer._export(SMALL, cfg, tmp_path / "onnx", int8=False, loop=True)
    assert sorted(read_spec(export)["graphs"]) == ["denoiser", "denoiser_film", "encoder", "film_cond", "film_level",
                                                   "loop_4"]                   # none past 32 steps
    result = cadence_worker({"case": SMALL, "steps": [4, 12], "chunks": 2, "threads": 1, "seed": 0,
                             "runtimes": ["torch-eager", "onnx-cpu-loop"], "export_dir": str(export)})
    rows = {(r["runtime"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {("torch-eager", 4), ("torch-eager", 12), ("onnx-cpu-loop", 4)}
    assert rows[("onnx-cpu-loop", 4)]["max_error"] < 1e-4


def test_rows_divide_the_peers_median_by_each_runtimes():
    samples = {"lowdim": {"peer": {10: [300.0, 310.0, 320.0]}, "cadence": {("onnx-cpu", 10): [100.0, 90.0, 110.0],
                                                                           ("torch-eager", 10): [310.0]},
                          "errors": {("onnx-cpu", 10): (1e-6, 5e-7), ("torch-eager", 10): (0.0, 0.0)},
                          "peer_train": [30.0, 40.0], "cadence_train": [45.0]}}
    rows = {r["runtime"]: r for r in peer._rows(samples, [10])}
    assert rows["onnx-cpu"]["speedup"] == pytest.approx(310.0 / 100.0) and rows["onnx-cpu"]["max_error"] == 1e-6
    assert rows["torch-eager"]["speedup"] == pytest.approx(1.0) and rows["DiffusionPolicy (torch eager)"]["speedup"] == 1
    (train,) = peer._training(samples)
    assert train["ratio"] == pytest.approx(45.0 / statistics.median([30.0, 40.0]))


def test_a_missing_peer_environment_is_one_line_and_writes_nothing(tmp_path):
    proc = cadence("bench", "peer", "peer_python=nowhere/bin/python", "out_dir=b", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "make peer-env" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()
    proc = cadence("bench", "peer", "cases=[pusht3d]", "out_dir=b", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "unknown case 'pusht3d'" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="LeRobot's environment is not built (`make peer-env`)")
def test_against_lerobot_on_a_small_unet(tmp_path):
    cadence("bench", "peer", f"peer_python={PEER_PYTHON}", "down_dims=[16,32]", "steps=[4]", "rounds=2", "chunks=2",
            "train_batches=1", "batch_size=4", "runtimes=[torch-eager,onnx-cpu]", "out_dir=b", cwd=tmp_path)
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    stacks = [(r["case"], r["stack"], r["runtime"]) for r in result["rows"]]
    assert ("image", "lerobot", "DiffusionPolicy (torch eager)") in stacks and ("lowdim", "cadence", "onnx-cpu") in stacks
    assert result["versions"]["lerobot"].startswith("0.4") and result["training"][0]["case"] == "image"
    image = result["params"]["image"]                  # the same network in both stacks: within 1% of parameters
    assert abs(image["peer"] - image["cadence"]) / image["peer"] < 0.01
