import numpy as np
import pytest
import torch

from cadence.checkpoint import load_policy
from cadence.evaluate import evaluate_policy, set_sample_steps
from cadence.train import train
from tests.conftest import tiny_train_config


@pytest.fixture(scope="module")
def tiny_policy(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = tiny_train_config(tiny_store, run, steps=4)
    cfg.eval.episodes = 0
    train(cfg, run, progress=False)
    return load_policy(run)


def test_evaluation_is_reproducible_and_leaves_the_global_rng_alone(tiny_policy, tmp_path):
    policy, cfg, _ = tiny_policy
    cfg.eval.episodes, cfg.eval.latency_calls = 3, 0
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, run_a = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    assert torch.equal(torch.rand(1), before)          # global RNG untouched by the evaluation
    second, run_b = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    assert first == second
    for a, b in zip(run_a.states, run_b.states):
        np.testing.assert_array_equal(a, b)
    cfg.eval.seed += 1
    _, run_c = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    assert not np.array_equal(run_a.states[0][0], run_c.states[0][0])   # other seeds, other starts


def test_sample_steps_override_is_checked(tiny_policy):
    policy, _, _ = tiny_policy
    set_sample_steps(policy, 2)
    assert policy.process.timesteps() == [50, 0]
    with pytest.raises(ValueError, match="sample_steps"):
        set_sample_steps(policy, 101)


def test_unwritable_video_format_fails_before_the_rollout(tiny_policy, tmp_path):
    pytest.importorskip("imageio", reason="imageio is a dependency")
    try:
        import imageio_ffmpeg  # noqa: F401
        pytest.skip("imageio-ffmpeg installed: .mp4 is writable here")
    except ImportError:
        pass
    policy, cfg, _ = tiny_policy
    cfg.eval.video_format, cfg.eval.video_episodes = "mp4", 1
    with pytest.raises(RuntimeError, match="imageio-ffmpeg"):
        evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, tmp_path / "out", "cpu", progress=False)
    assert not (tmp_path / "out").exists()
