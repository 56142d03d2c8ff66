import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from cadence.checkpoint import CheckpointError, load_policy, resolve_checkpoint_dir
from cadence.train import train
from tests.conftest import tiny_train_config


def _obs(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.rand(3, 2, 6, generator=g) - 0.5
    return {"state": state}


@pytest.fixture(scope="module")
def trained_run(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = tiny_train_config(tiny_store, run, steps=6)
    train(cfg, run, progress=False)
    return run


@pytest.mark.parametrize("process,experts", [("ddpm", None), ("flow", None), ("regression", None), ("edm", 0),
                                             ("edm", 4)])
def test_round_trip_gives_the_same_actions(tiny_store, tmp_path, process, experts):
    cfg = tiny_train_config(tiny_store, tmp_path, process=process, steps=4)
    cfg.eval.episodes = 0
    if experts is not None:     # the transformer, dense or MoDE
        cfg.policy.network = "transformer"
        cfg.policy.transformer.merge_with({"d_model": 16, "n_layers": 2, "n_heads": 2, "num_experts": experts})
    train(cfg, tmp_path, progress=False)
    a, _, meta = load_policy(tmp_path)
    b, cfg_b, _ = load_policy(tmp_path / "checkpoint")
    noise = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(1))
    out_a = a.predict_chunk(_obs(), noise=noise).actions
    out_b = b.predict_chunk(_obs(), noise=noise).actions
    assert torch.equal(out_a, out_b)
    assert out_a.shape == (3, 8, 2) and torch.isfinite(out_a).all()
    assert meta["step"] == 4 and cfg_b.policy.process == process
    # The loaded weights are the EMA weights that were saved, not a fresh initialisation.
    saved = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    for name, tensor in a.weights().items():
        assert torch.equal(tensor, saved[name]), name


def test_normalizer_comes_back_from_the_checkpoint(trained_run, tiny_store):
    from cadence.datasets.episode_store import EpisodeStore

    policy, _, meta = load_policy(trained_run)
    assert meta["normalizer_modes"] == {"state": "limits", "action": "limits"}
    stats = EpisodeStore.open(tiny_store).stats("action")
    low = torch.tensor(stats["min"], dtype=torch.float32)
    high = torch.tensor(stats["max"], dtype=torch.float32)
    assert torch.allclose(policy.normalizer.normalize("action", low), -torch.ones(2), atol=1e-5)
    assert torch.allclose(policy.normalizer.normalize("action", high), torch.ones(2), atol=1e-5)


def test_shape_mismatch_names_the_tensor(trained_run, tmp_path):
    import shutil

    ckpt = tmp_path / "checkpoint"
    shutil.copytree(resolve_checkpoint_dir(trained_run), ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    name = next(k for k in weights if k.endswith("mlp.0.weight"))
    weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ".*shape"):
        load_policy(ckpt)


def test_config_that_builds_another_network_is_refused(trained_run, tmp_path):
    import shutil

    ckpt = tmp_path / "checkpoint"
    shutil.copytree(resolve_checkpoint_dir(trained_run), ckpt)
    text = (ckpt / "config.yaml").read_text().replace("- 32\n", "- 48\n")
    (ckpt / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="shape"):
        load_policy(ckpt)


def test_unknown_config_key_and_missing_checkpoint(trained_run, tmp_path):
    import shutil

    ckpt = tmp_path / "checkpoint"
    shutil.copytree(resolve_checkpoint_dir(trained_run), ckpt)
    (ckpt / "config.yaml").write_text((ckpt / "config.yaml").read_text() + "bogus_key: 1\n")
    with pytest.raises(CheckpointError, match="bogus_key"):
        load_policy(ckpt)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_policy(tmp_path / "nowhere")


def test_checkpoint_holds_no_pickle(trained_run):
    ckpt = resolve_checkpoint_dir(trained_run)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["config.yaml", "meta.json", "model.safetensors", "normalizer.safetensors",
                     "train_state.json", "train_state.safetensors"]
    json.loads((ckpt / "meta.json").read_text())
    for p in ckpt.iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks like a pickle"


def test_anchor_policy_round_trip_keeps_the_fitted_anchors(tiny_store, tmp_path):
    from cadence.datasets.window_dataset import WindowDataset
    from cadence.policies.processes.kmeans import kmeans
    from tests.conftest import tiny_anchor_config

    cfg = tiny_anchor_config(tiny_store, tmp_path, steps=4)
    cfg.eval.episodes = 0
    train(cfg, tmp_path, progress=False)
    policy, _, _ = load_policy(tmp_path)
    anchors = policy.process.anchors
    assert anchors.shape == (1, 4, 8, 2) and bool(policy.process.fitted)
    # the anchors are k-means (seeded by train.seed) of the normalised training chunks
    data = WindowDataset.for_task(cfg.task, 2, 8)
    chunks = policy.normalizer.normalize("action", data.action_chunks_by_task()[0].float())
    centres, _ = kmeans(chunks.reshape(len(chunks), -1), 4, 100, torch.Generator().manual_seed(cfg.train.seed))
    torch.testing.assert_close(anchors[0], centres.view(4, 8, 2))
    assert "process.anchors" in load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    noise = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(1))
    again, _, _ = load_policy(tmp_path / "checkpoint")
    assert torch.equal(policy.predict_chunk(_obs(), noise=noise).actions,
                       again.predict_chunk(_obs(), noise=noise).actions)
    # a resumed run keeps its anchors (no refit) and trains on
    cfg.train.steps, cfg.resume = 6, True
    train(cfg, tmp_path, progress=False)
    resumed, _, meta = load_policy(tmp_path)
    assert meta["step"] == 6 and torch.equal(resumed.process.anchors, anchors)


def test_streaming_policy_trains_evaluates_and_round_trips(tiny_store, tmp_path):
    cfg = tiny_train_config(tiny_store, tmp_path, process="streaming", steps=4)
    cfg.policy.merge_with({"pred_horizon": 16, "exec_horizon": 4, "sample_steps": 2, "streaming": {"start_steps": 3}})
    cfg.eval.episodes = 3              # a lockstep rollout whose batch shrinks as episodes end
    train(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "eval-step4" / "eval.json").read_text())
    assert summary["n_episodes"] == 3
    a, _, _ = load_policy(tmp_path)
    b, _, _ = load_policy(tmp_path / "checkpoint")
    assert a.process.num_chunks == 3 and a.process.buffer is None
    outs = [p.predict_chunk(_obs(), generator=torch.Generator().manual_seed(0)).actions for p in (a, b)]
    assert torch.equal(outs[0], outs[1]) and a.process.buffer.shape == (3, 16, 2)
    a.reset()
    assert a.process.buffer is None
