import json

import pytest
import torch
from safetensors.torch import load_file

from cadence.checkpoint import CheckpointError
from cadence.lr_schedule import warmup_cosine
from cadence.train import train
from tests.conftest import tiny_train_config


def _weights(run):
    return load_file(str(run / "checkpoint" / "train_state.safetensors"))


def test_resume_continues_exactly(tiny_store, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    cfg = tiny_train_config(tiny_store, straight, steps=8)
    cfg.eval.episodes = 0
    train(cfg, straight, progress=False)

    first = tiny_train_config(tiny_store, split, steps=8, checkpoint_every=4)
    first.eval.episodes = 0
    # Stop after 4 of 8 steps: train to step 4 with the same schedule, then resume.
    first_half = first.copy()
    first_half.train.steps = 8
    _train_until(first_half, split, stop_at=4)
    meta = json.loads((split / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 4
    with pytest.raises(CheckpointError, match="resume=true"):
        train(first, split, progress=False)
    first.resume = True
    train(first, split, progress=False)

    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = lambda run: [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses(split)[-2:] == losses(straight)[-2:]


def _train_until(cfg, run, stop_at):
    """Run training and kill it (by exception) right after the checkpoint at ``stop_at``."""
    import cadence.train as train_module

    original = train_module.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(*args, **kwargs):
        path = original(*args, **kwargs)
        if args[3] == stop_at:
            raise Stop
        return path

    train_module.save_checkpoint = save_then_stop
    try:
        with pytest.raises(Stop):
            train(cfg, run, progress=False)
    finally:
        train_module.save_checkpoint = original


def test_training_reduces_the_loss_and_writes_metrics(tiny_store, tmp_path):
    cfg = tiny_train_config(tiny_store, tmp_path, process="regression", steps=40, lr=3e-3, log_every=10,
                            eval_every=20)
    train(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0]
    assert all({"lr", "grad_norm", "samples_per_s"} <= r.keys() for r in records if "loss" in r)
    evals = [r for r in records if "eval/success_rate" in r]
    assert [r["step"] for r in evals] == [20, 40] and evals[-1]["eval/n_episodes"] == 2
    assert (tmp_path / "eval-step20" / "eval.json").is_file() and (tmp_path / "eval-step40" / "eval.json").is_file()


def test_no_evaluation_at_all_when_eval_episodes_is_zero(tiny_store, tmp_path):
    cfg = tiny_train_config(tiny_store, tmp_path, process="regression", steps=6, eval_every=2)
    cfg.eval.episodes = 0
    train(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if any(k.startswith("eval/") for k in r)]
    assert not list(tmp_path.glob("eval-step*")) and (tmp_path / "checkpoint" / "meta.json").is_file()


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 1e-3


def test_image_observations_train_and_evaluate_end_to_end(tmp_path):
    from cadence.checkpoint import load_policy
    from cadence.datasets.episode_store import EpisodeStore
    from cadence.envs.demonstrations import expert_episodes

    store = EpisodeStore.create(tmp_path / "images.zarr", fps=10)
    for episode, _ in expert_episodes("bimodal_reach", "cadence/BimodalReach-v0", 4, env_kwargs={"image_size": 32}):
        store.append_episode(episode)
    assert store.features["image"].shape == (32, 32, 3) and store.features["image"].dtype == "uint8"

    cfg = tiny_train_config(tmp_path / "images.zarr", tmp_path / "run", steps=3)
    cfg.task.env_kwargs = {"image_size": 32}
    cfg.task.obs_keys = ["state", "image"]
    cfg.eval.episodes = 1
    train(cfg, tmp_path / "run", progress=False)
    policy, _, meta = load_policy(tmp_path / "run")
    assert meta["obs_shapes"] == {"state": [6], "image": [32, 32, 3]}
    assert "image" in policy.encoder.image_keys and "image" not in policy.normalizer
    summary = json.loads((tmp_path / "run" / "eval-step3" / "eval.json").read_text())
    assert summary["n_episodes"] == 1
    # The image path matters: a different image changes the condition.
    obs = {"state": torch.zeros(1, 2, 6), "image": torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8)}
    bright = dict(obs, image=torch.full_like(obs["image"], 200))
    assert not torch.allclose(policy.encoder(obs, policy.normalizer), policy.encoder(bright, policy.normalizer))


def test_tracking_falls_back_to_local_metrics_without_wandb(tiny_store, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    cfg = tiny_train_config(tiny_store, tmp_path, steps=2, log_every=1)
    cfg.tracking.mode = "offline"
    cfg.eval.episodes = 0
    train(cfg, tmp_path, progress=False)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_keeps_the_checkpoints_policy(tiny_store, tmp_path, caplog):
    cfg = tiny_train_config(tiny_store, tmp_path, process="flow", steps=3)
    cfg.eval.episodes = 0
    train(cfg, tmp_path, progress=False)
    again = tiny_train_config(tiny_store, tmp_path, process="ddpm", steps=5)   # forgot policy=flow
    again.eval.episodes, again.resume = 0, True
    with caplog.at_level("WARNING"):
        train(again, tmp_path, progress=False)
    assert "policy.process='ddpm' (checkpoint: 'flow')" in caplog.text
    from cadence.checkpoint import load_policy

    policy, saved, meta = load_policy(tmp_path)
    assert meta["step"] == 5 and saved.policy.process == "flow" and saved.train.steps == 5
    assert type(policy.process).__name__ == "RectifiedFlowProcess"


def test_bf16_autocast_trains_with_fp32_weights(tiny_store, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = tiny_train_config(tiny_store, tmp_path / precision, steps=6, precision=precision)
        cfg.eval.episodes = 0
        train(cfg, tmp_path / precision, progress=False)
        runs[precision] = [r["loss"] for r in map(json.loads, (tmp_path / precision / "metrics.jsonl")
                                                  .read_text().splitlines()) if "loss" in r]
    assert all(torch.isfinite(torch.tensor(runs["bf16"])))
    assert torch.allclose(torch.tensor(runs["bf16"]), torch.tensor(runs["fp32"]), rtol=0.1)   # bf16 rounding only
    assert runs["bf16"] != runs["fp32"]                      # ... which is there: autocast took effect
    weights = load_file(str(tmp_path / "bf16" / "checkpoint" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
    with pytest.raises(ValueError, match="train.precision"):    # the schema refuses it when composed
        tiny_train_config(tiny_store, tmp_path / "bad", steps=2, precision="fp8")
