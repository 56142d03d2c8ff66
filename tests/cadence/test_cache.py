"""cadence cache: schedules beside the checkpoint, loaded with it, used by eval, refused when stale."""
import json

import pytest
import torch

from cadence.cache_file import SCHEDULE_FILE, read_schedules, write_schedules
from cadence.checkpoint import CheckpointError, load_policy
from cadence.policies.caching import BlockCache, uniform_schedule
from cadence.policies.caching.block_cache import install
from cadence.policies.caching.schedule import ScheduleError
from cadence.train import train
from tests.conftest import tiny_train_config

from .test_cli import cadence

TRANSFORMER = {"network": "transformer", "transformer": {"d_model": 16, "n_layers": 2, "n_heads": 2}}


@pytest.fixture(scope="module")
def transformer_run(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("transformer")
    cfg = tiny_train_config(tiny_store, run, steps=6)
    cfg.policy.merge_with(TRANSFORMER)
    cfg.eval.episodes = 0
    train(cfg, run, progress=False)
    return run


def _obs():
    return {"state": torch.rand(3, 2, 6, generator=torch.Generator().manual_seed(0)) - 0.5}


def test_schedules_round_trip_beside_the_checkpoint_and_load_with_it(transformer_run):
    ckpt = transformer_run / "checkpoint"
    policy, _, _ = load_policy(ckpt)
    assert policy.denoiser.branch_cache is None
    keys, levels = policy.denoiser.branch_keys(), policy.process.levels()
    four = uniform_schedule(keys, levels, 2)
    write_schedules(ckpt, [four], step=6)
    assert read_schedules(ckpt) == [four]
    policy.process.sample_steps = 2
    two = uniform_schedule(keys, policy.process.levels(), 1)
    write_schedules(ckpt, [two])                                  # other step counts are kept
    assert [s.sample_steps for s in read_schedules(ckpt)] == [4, 2]

    cached, _, _ = load_policy(ckpt)
    assert [s.sample_steps for s in cached.denoiser.branch_cache.schedules] == [4, 2]
    reference, _, _ = load_policy(ckpt, block_cache=False)
    assert reference.denoiser.branch_cache is None
    install(reference.denoiser, BlockCache(four))
    noise = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cached.predict_chunk(_obs(), noise=noise).actions,
                       reference.predict_chunk(_obs(), noise=noise).actions)
    (ckpt / SCHEDULE_FILE).unlink()


def test_a_stale_or_broken_schedule_file_is_refused_by_name(transformer_run, tmp_path):
    import shutil
    ckpt = tmp_path / "checkpoint"
    shutil.copytree(transformer_run / "checkpoint", ckpt)
    policy, _, _ = load_policy(ckpt)
    write_schedules(ckpt, [uniform_schedule(policy.denoiser.branch_keys(), policy.process.levels(), 2)])
    data = json.loads((ckpt / SCHEDULE_FILE).read_text())
    data["weights_sha256"] = "0" * 64
    (ckpt / SCHEDULE_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="cache_schedule.json: calibrated for other weights"):
        load_policy(ckpt)
    (ckpt / SCHEDULE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(ckpt)
    write_schedules(ckpt, [uniform_schedule(["blocks.0.ffn"], policy.process.levels(), 2)])   # replaces the broken file
    with pytest.raises(CheckpointError, match="branches missing"):
        load_policy(ckpt)
    with pytest.raises(ScheduleError, match="branches missing"):
        install(policy.denoiser, BlockCache(read_schedules(ckpt)))
    assert load_policy(ckpt, block_cache=False)[0].denoiser.branch_cache is None


@pytest.mark.timeout(600)
def test_cache_command_calibrates_and_eval_uses_it(tiny_store, transformer_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(transformer_run, run)
    # the run's config names the tiny store by its absolute path: calibration reads windows from it
    out = cadence("cache", f"checkpoint={run}", "method=bac", "sample_steps=[4,2]", "updates=[2,1]", "calibration=6",
                  "bubbling_blocks=1", cwd=tmp_path).stdout
    assert "| bac" in out and "cache_schedule.json" in out
    schedules = {s.sample_steps: s for s in read_schedules(run / "checkpoint")}
    assert set(schedules) == {4, 2} and schedules[4].method == "bac" and schedules[4].info["calibration_samples"] == 6
    assert all(len(v) >= 2 for v in schedules[4].update_steps.values())
    cadence("eval", f"checkpoint={run}", "eval.episodes=2", "eval.video_episodes=0", "eval.latency_calls=0",
            "out_dir=e", cwd=tmp_path)
    summary = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert summary["block_cache"]["method"] == "bac" and summary["block_cache"]["updates"] == 2
    bad = cadence("eval", f"checkpoint={run}", "eval.episodes=1", "eval.sample_steps=3", "eval.video_episodes=0",
                  "eval.latency_calls=0", "out_dir=e3", cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "no cache schedule for this sampler (3 steps" in bad.stderr
    cadence("eval", f"checkpoint={run}", "eval.episodes=1", "eval.sample_steps=3", "eval.video_episodes=0",
            "eval.latency_calls=0", "out_dir=e4", "block_cache=false", cwd=tmp_path)
    out = cadence("cache", f"checkpoint={run}", "updates=[2]", "calibration=6", cwd=tmp_path).stdout   # the default
    shared = {s.sample_steps: s for s in read_schedules(run / "checkpoint")}
    assert "| shared" in out and shared[4].method == "shared" and shared[2].method == "bac"      # 2 steps kept
    assert len({tuple(v) for v in shared[4].update_steps.values()}) == 1 and len(shared[4].update_steps["blocks.0.ffn"]) == 2


def test_cache_command_refuses_a_unet_policy_and_bad_budgets(tiny_store, tmp_path):
    run = tmp_path / "unet"
    cfg = tiny_train_config(tiny_store, run, steps=2)
    cfg.eval.episodes = 0
    train(cfg, run, progress=False)
    bad = cadence("cache", f"checkpoint={run}", "method=uniform", cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "needs a transformer denoiser" in bad.stderr
    from cadence.cache import budgets
    with pytest.raises(ScheduleError, match="1..4"):
        budgets([4], [5])
    with pytest.raises(ScheduleError, match="one value or one per entry"):
        budgets([4, 2, 1], [1, 1])
