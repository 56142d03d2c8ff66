from cadence.envs.rendering import choose_gl_backend

choose_gl_backend()   # before anything imports mujoco

import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from cadence.config import TrainApp
from cadence.datasets.episode_store import EpisodeStore
from cadence.envs.demonstrations import expert_episodes


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """Ten real expert episodes of the default task (five start/goal pairs, both sides)."""
    path = tmp_path_factory.mktemp("data") / "bimodal_reach.zarr"
    store = EpisodeStore.create(path, fps=10)
    for episode, info in expert_episodes("bimodal_reach", "cadence/BimodalReach-v0", 10, seed=0):
        assert info["is_success"]
        store.append_episode(episode)
    return path


def tiny_train_config(dataset, run_dir, process="ddpm", steps=6, **train):
    """A TrainApp config small enough to train in a second or two."""
    cfg = OmegaConf.structured(TrainApp)
    return OmegaConf.merge(cfg, {
        "task": {"dataset": str(dataset)},
        "policy": {"name": process, "process": process, "pred_horizon": 8, "exec_horizon": 4,
                   "down_dims": [16, 32], "level_embed_dim": 16, "obs_feature_dim": 16, "sample_steps": 4},
        "train": {"steps": steps, "batch_size": 16, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 0,
                  **train},
        "eval": {"episodes": 2, "video_episodes": 0, "plot": False, "latency_calls": 1},
        "run_dir": str(run_dir),
    })


def train_tiny_run(dataset, run_dir, steps=2):
    """A tiny run trained in-process without evaluations; returns its folder."""
    from cadence.train import train

    cfg = tiny_train_config(dataset, run_dir, steps=steps)
    cfg.eval.episodes = 0
    train(cfg, run_dir, progress=False)
    return run_dir


def tiny_anchor_config(dataset, run_dir, steps=4, **train):
    """tiny_train_config for truncated anchor diffusion (a small cascade decoder, 4 anchors)."""
    cfg = tiny_train_config(dataset, run_dir, process="anchor", steps=steps, **train)
    return OmegaConf.merge(cfg, {"policy": {"network": "anchor_decoder", "sample_steps": 2,
                                            "anchor": {"num_anchors": 4, "d_model": 16, "n_heads": 2,
                                                       "cond_tokens": 2, "ffn_mult": 2}}})
