"""The `cadence` command end to end, as a user runs it: real processes, real files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY_POLICY = ["policy.pred_horizon=8", "policy.exec_horizon=4", "policy.down_dims=[16,32]",
               "policy.level_embed_dim=16", "policy.obs_feature_dim=16", "policy.sample_steps=4"]
TINY_TRAIN = ["train.steps=6", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=3",
              "train.checkpoint_every=0"]
TINY_EVAL = ["eval.episodes=3", "eval.video_episodes=1", "eval.latency_calls=2"]


def cadence(*args, cwd, check=True):
    env = dict(os.environ)   # MUJOCO_GL chosen by conftest
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cadence {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_collect_train_eval_end_to_end(tmp_path):
    out = cadence("collect", "collect.episodes=6", cwd=tmp_path).stdout
    assert "wrote 6 episodes" in out and "expert success 1.000" in out
    assert (tmp_path / "data" / "bimodal_reach.zarr" / "meta" / "episode_ends").is_dir()
    again = cadence("collect", "collect.episodes=2", cwd=tmp_path).stdout     # appended, with new seeds
    assert "wrote 2 episodes (expert seed 6)" in again and "holds 8 episodes" in again

    cadence("train", "run_dir=runs/tiny", *TINY_POLICY, *TINY_TRAIN, *TINY_EVAL, cwd=tmp_path)
    run = tmp_path / "runs" / "tiny"
    assert (run / "checkpoint" / "model.safetensors").is_file()
    assert (run / ".hydra" / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [3, 6]
    assert {"lr", "grad_norm", "samples_per_s"} <= set(records[0])
    final = json.loads((run / "eval-step6" / "eval.json").read_text())
    assert final["n_episodes"] == 3 and Path(final["video"]).is_file() and Path(final["plot"]).is_file()
    evaluated = {k: v for r in records if r["step"] == 6 and "loss" not in r for k, v in r.items()}
    assert evaluated["eval/success_rate"] == final["success_rate"] and evaluated["eval/rollouts"] == final["video"]
    assert evaluated["eval/latency"]["rows"] == [[6, 4, final["ms_per_chunk"], final["ms_per_chunk_p90"],
                                                  final["success_rate"]]]
    # Weights & Biases, offline by default: the run, its rollout video and latency table beside it
    wandb_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and list(wandb_runs[0].glob("run-*.wandb"))
    assert list(wandb_runs[0].glob("files/media/videos/eval/rollouts_*.gif"))
    assert list(wandb_runs[0].glob("files/media/table/eval/latency_*.table.json"))

    proc = cadence("eval", "checkpoint=runs/tiny", "out_dir=evals/a", "eval.episodes=4", "eval.video_episodes=0",
                   "eval.sample_steps=2", cwd=tmp_path)
    result = json.loads((tmp_path / "evals" / "a" / "eval.json").read_text())
    assert result["n_episodes"] == 4 and result["sample_steps"] == 2
    assert f"success {result['success_rate']:.2f} over 4 episodes" in proc.stdout
    cadence("eval", "checkpoint=runs/tiny", "out_dir=evals/b", "eval.episodes=2", "eval.video_episodes=0",
            "eval.sample_steps=2", "eval.search.candidates=3", "eval.search.method=zero_order", "eval.search.rounds=1",
            "eval.search.verifier=oracle", "eval.search.lookahead_chunks=1", cwd=tmp_path)
    searched = json.loads((tmp_path / "evals" / "b" / "eval.json").read_text())
    assert searched["search"] == {"candidates": 3, "method": "zero_order", "rounds": 1, "verifier": "oracle",
                                  "radius": 0.5, "trust": 1.0, "lookahead_chunks": 1} and searched["n_episodes"] == 2
    assert "search" not in result
    bad = cadence("eval", "checkpoint=runs/tiny", "eval.search.verifier=psychic", cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "oracle" in bad.stderr

    # Continuing a finished run needs resume=true; more steps then extend it.
    refused = cadence("train", "run_dir=runs/tiny", *TINY_POLICY, *TINY_TRAIN, cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "resume=true" in refused.stderr + refused.stdout
    cadence("train", "run_dir=runs/tiny", "resume=true", *TINY_POLICY, *TINY_TRAIN, "train.steps=9",
            "eval.episodes=0", "tracking=none", cwd=tmp_path)
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["step"] == 9
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1           # tracking=none: no new W&B run
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 9


def test_demo_end_to_end(tmp_path):
    proc = cadence("demo", "collect.episodes=6", "demo.out_dir=out", "demo.steps={diffusion:4,flow:4,regression:4}",
                   *[f"policies.{p}.{o.removeprefix('policy.')}" for p in ("diffusion", "flow", "regression")
                     for o in TINY_POLICY],
                   *TINY_TRAIN[1:], "eval.episodes=2", "eval.video_episodes=0", "eval.latency_calls=1",
                   cwd=tmp_path)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["policy"] for r in results["rows"]] == ["diffusion", "flow", "regression"]
    assert all(r["eval"]["n_episodes"] == 2 and float(r["ms/chunk"]) > 0 for r in results["rows"])
    assert "| policy" in proc.stdout and (tmp_path / "out" / "report.md").is_file()


@pytest.mark.parametrize("command,groups", [("train", ["policy:", "task:", "tracking:"]), ("collect", ["task:"]),
                                            ("demo", ["task:"]), ("eval", [])])
def test_help_lists_config_groups(tmp_path, command, groups):
    out = cadence(command, "--help", cwd=tmp_path).stdout
    assert f"cadence {command}" in out and "== Config ==" in out
    for group in groups:
        assert group in out


def test_unknown_key_and_command_fail_with_their_names(tmp_path):
    proc = cadence("train", "train.stepz=3", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "stepz" in proc.stderr
    proc = cadence("trian", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr
    proc = cadence("eval", "checkpoint=nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "cadence eval: error: nowhere: no checkpoint" in proc.stderr
    proc = cadence("train", "run_dir=r", "task.dataset=missing.zarr", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "missing.zarr" in proc.stderr and "cadence collect" in proc.stderr
