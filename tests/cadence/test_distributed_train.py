"""cadence train and cadence eval under torchrun (two CPU processes, Gloo); a run killed with SIGKILL, then resumed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cadence.checkpoint import load_policy
from cadence.distributed import launcher

pytestmark = pytest.mark.timeout(600)

TINY = ["policy.down_dims=[16,32]", "policy.level_embed_dim=16", "policy.obs_feature_dim=16", "policy.pred_horizon=8",
        "policy.exec_horizon=4", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=2",
        "train.checkpoint_every=0", "train.threads=1", "eval.episodes=0"]
EVAL = ["eval.episodes=3", "eval.video_episodes=0", "eval.plot=false", "eval.latency_calls=0"]


def _run(cmd, cwd, retry_submitit_race=False):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode and retry_submitit_race and _submitit_log_race(proc.stderr):
        shutil.rmtree(Path(cwd) / "runs", ignore_errors=True)
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _submitit_log_race(stderr: str) -> bool:
    """submitit's local controller opens its log in .submitit/<its pid>/, which the launching process
    makes only after starting it: on a loaded machine the controller can be first (FileNotFoundError,
    then "has not produced any output"). An upstream race, not cadence's: such a run is tried again."""
    return "FileNotFoundError" in stderr and "_log.out" in stderr and "has not produced any output" in stderr


def train_cmd(*args, nproc=1, evaluate=False):
    tiny = [*TINY[:-1], *EVAL] if evaluate else TINY
    return [*launcher(nproc), "-m", "cadence.cli", "train", *tiny, *args]


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_processes_follow_one_process_with_the_same_global_batch(tiny_store, tmp_path):
    common = [f"task.dataset={tiny_store}", "policy=regression", "train.steps=12"]
    _run(train_cmd(*common, f"run_dir={tmp_path / 'one'}"), tmp_path)
    out = _run(train_cmd(*common, f"run_dir={tmp_path / 'two'}", nproc=2), tmp_path)
    assert "batch 16 per step = 2 processes x 8" in out.stdout + out.stderr
    meta = json.loads((tmp_path / "two" / "checkpoint" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_max_weight_difference"] == 0.0 and meta["step"] == 12
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 6 and one[0] > one[-1]
    assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-4)
    a = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert not (tmp_path / "two" / "rank1").exists() and len(list((tmp_path / "two").glob("metrics*.jsonl"))) == 1


def test_diffusion_ranks_stay_identical_and_the_batch_must_divide(tiny_store, tmp_path):
    common = [f"task.dataset={tiny_store}", "policy=diffusion", "train.steps=6"]
    _run(train_cmd(*common, f"run_dir={tmp_path / 'two'}", nproc=2, evaluate=True), tmp_path)
    meta = json.loads((tmp_path / "two" / "checkpoint" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks_max_weight_difference"] == 0.0
    assert all(l == l for l in _losses(tmp_path / "two"))
    evaluated = json.loads((tmp_path / "two" / "eval-step6" / "eval.json").read_text())   # both ranks rolled out
    assert evaluated["n_episodes"] == 3 and evaluated["waves"] == 2 and evaluated["batch_size"] == 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    bad = subprocess.run(train_cmd(*common, "train.batch_size=15", f"run_dir={tmp_path / 'bad'}", nproc=2),
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "divisible by the number of processes (2)" in bad.stdout + bad.stderr


def test_a_run_killed_mid_training_resumes_to_the_same_step_count(tiny_store, tmp_path):
    run = tmp_path / "run"
    cmd = train_cmd(f"task.dataset={tiny_store}", "train.steps=400", "train.checkpoint_every=5", f"run_dir={run}")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    meta = run / "checkpoint" / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(next(p for p in (meta, run / "checkpoint.old" / "meta.json") if p.exists()).read_text())
    assert 20 <= killed_at["step"] < 400
    _run(train_cmd(f"task.dataset={tiny_store}", "train.steps=400", "train.checkpoint_every=5", f"run_dir={run}",
                   "resume=true"), tmp_path)
    assert json.loads(meta.read_text())["step"] == 400
    policy, _, _ = load_policy(run)                     # loads strictly: nothing half-written
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.old").exists()
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps[-1] == 400


@pytest.mark.slow           # 30-50 s; make test-all runs it
def test_bench_scale_table_for_one_and_two_processes(tiny_store, tmp_path):
    from .bench.test_anchor import _list
    from .test_cli import cadence

    out = cadence("bench", "scale", f"task.dataset={tiny_store}", "policy_name=regression", "steps=6", "batch_size=16",
                  "log_every=2", "threads=1", "precisions=[fp32,bf16]", f"overrides={_list(TINY[:5])}", "out_dir=b",
                  cwd=tmp_path).stdout
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    rows = result["rows"]
    assert [(r["processes"], r["precision"], r["batch_per_process"], r["threads_per_process"]) for r in rows] == \
        [(1, "fp32", 16, 1), (1, "bf16", 16, 1), (2, "fp32", 8, 1), (2, "bf16", 8, 1)]
    assert all(r["samples_per_s"] > 0 and r["windows"] == 2 for r in rows) and rows[0]["speedup"] == 1.0
    assert rows[2]["speedup"] == pytest.approx(rows[2]["samples_per_s"] / rows[0]["samples_per_s"], rel=0.01, abs=0.006)
    losses = [r["final_loss"] for r in rows]
    assert losses[0] == pytest.approx(losses[2], rel=1e-3) and losses[1] == pytest.approx(losses[3], rel=1e-2)
    assert losses[0] != losses[1] and losses[0] == pytest.approx(losses[1], rel=0.1)   # bf16 rounds, trains alike
    assert "| processes | precision" in out and result["gpu"] is None
    bad = cadence("bench", "scale", f"task.dataset={tiny_store}", "precisions=[fp16]", "out_dir=c", cwd=tmp_path,
                  check=False)
    assert bad.returncode == 1 and "Invalid value 'fp16', expected one of [fp32, bf16]" in bad.stderr and not (tmp_path / "c" / "1-processes-fp16").exists()


@pytest.mark.parametrize("launcher_override", [[], ["hydra/launcher=submitit_local"]], ids=["basic", "submitit"])
def test_a_multirun_sweep_gives_each_job_its_own_run_folder_and_config(tiny_store, tmp_path, launcher_override):
    # submitit_local: the Slurm launcher's plugin and job pickling, its jobs run as local processes
    out = _run([sys.executable, "-m", "cadence.cli", "train", "-m", *launcher_override, "train.seed=0,1",
                f"task.dataset={tiny_store}", "policy=regression", *TINY, "train.steps=2"], tmp_path,
               retry_submitit_race=bool(launcher_override))
    sweeps = list((tmp_path / "runs").glob("sweep-bimodal_reach-regression-*"))
    assert len(sweeps) == 1, out.stdout
    for job, seed in (("0", 0), ("1", 1)):
        run = sweeps[0] / job
        assert (run / ".hydra" / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
        _, cfg, meta = load_policy(run)
        assert cfg.train.seed == seed and meta["step"] == 2
    assert (sweeps[0] / ".submitit").is_dir() == bool(launcher_override)


def test_the_documented_slurm_sweep_composes(tmp_path):
    out = _run([sys.executable, "-m", "cadence.cli", "train", "hydra/launcher=submitit_slurm",
                "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1", "--cfg", "hydra"], tmp_path).stdout
    launcher_cfg = yaml.safe_load(out)["hydra"]["launcher"]
    assert launcher_cfg["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher_cfg["partition"] == "gpu" and launcher_cfg["gpus_per_node"] == 1
    assert launcher_cfg["submitit_folder"].startswith("${hydra.sweep.dir}")    # logs beside the sweep's runs


@pytest.mark.slow           # 30-50 s; make test-all runs it
def test_evaluation_over_two_ranks_and_in_workers_matches_one_process(tiny_store, tmp_path):
    _run(train_cmd(f"task.dataset={tiny_store}", "policy=diffusion", "train.steps=4", f"run_dir={tmp_path / 'run'}"),
         tmp_path)
    episodes = ["eval.episodes=5", "eval.batch_size=2", "eval.latency_calls=0", "eval.plot=true"]

    def evaluate(name, *extra, nproc=1):
        _run([*launcher(nproc), "-m", "cadence.cli", "eval", f"checkpoint={tmp_path / 'run'}", *episodes,
              f"out_dir={tmp_path / name}", *extra], tmp_path)
        return json.loads((tmp_path / name / "eval.json").read_text())

    one = evaluate("one", "eval.video_episodes=0")
    two = evaluate("two", "eval.video_episodes=1", nproc=2)
    workers = evaluate("workers", "eval.video_episodes=0", "eval.async_envs=true")
    assert one["n_episodes"] == 5 and one["waves"] == 3
    assert [e["seed"] for e in one["episodes"]] == list(range(100_000, 100_005))
    assert Path(two.pop("video")).is_file()             # rank 0 films its first wave
    assert all(r.pop("rollout_seconds") > 0 for r in (one, two, workers))
    plots = [Path(r.pop("plot")).read_bytes() for r in (one, two, workers)]
    assert plots[0] == plots[1] == plots[2]             # every episode's trajectory, drawn: the same states
    assert one == two == workers
