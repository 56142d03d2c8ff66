import numpy as np
import pytest
import torch

from cadence.checkpoint import load_policy
from cadence.envs.env_pools import EnvPools
from cadence.evaluate import evaluate_policy, evaluation_waves, set_sample_steps
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


def test_waves_cover_the_seeds_in_order():
    seeds = list(range(10, 17))
    assert evaluation_waves(seeds, 3) == [[10, 11, 12], [13, 14, 15], [16]]
    assert evaluation_waves(seeds, 0) == [seeds]
    assert evaluation_waves(seeds, 0, world=2) == [[10, 11, 12, 13], [14, 15, 16]]
    assert evaluation_waves(seeds, 20, world=2) == [seeds]
    with pytest.raises(ValueError, match="eval.batch_size"):
        evaluation_waves(seeds, -1)


def test_waves_in_worker_processes_match_waves_here(tiny_policy):
    policy, cfg, _ = tiny_policy
    cfg.eval.episodes, cfg.eval.latency_calls, cfg.eval.batch_size = 3, 0, 2
    here, run_here = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    cfg.eval.async_envs = True
    workers, run_workers = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    assert here == workers and here["waves"] == 2 and here["batch_size"] == 2 and here["n_episodes"] == 3
    assert run_here.seeds == [cfg.eval.seed, cfg.eval.seed + 1, cfg.eval.seed + 2]
    for a, b in zip(run_here.states, run_workers.states):
        np.testing.assert_array_equal(a, b)
    cfg.eval.async_envs, cfg.eval.batch_size = False, 0     # one wave: its noise differs from wave 1's
    _, whole = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    np.testing.assert_array_equal(whole.states[0][:2], run_here.states[0][:2])   # same starts
    assert any(not np.array_equal(a, b) for a, b in zip(whole.states, run_here.states))


def test_no_episodes_is_refused(tiny_policy):
    policy, cfg, _ = tiny_policy
    cfg.eval.episodes = 0
    with pytest.raises(ValueError, match="eval.episodes"):
        evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)


class _Broken:
    def eval(self):
        return self

    def predict_chunk(self, obs):
        raise RuntimeError("broken policy")


def test_pools_keep_async_workers_between_evaluations_and_drop_them_after_a_failure(tiny_policy):
    policy, cfg, _ = tiny_policy
    cfg.eval.episodes, cfg.eval.latency_calls, cfg.eval.batch_size, cfg.eval.async_envs = 3, 0, 2, False
    here, _ = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    cfg.eval.async_envs = True
    with EnvPools() as pools:
        first, _ = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False, pools=pools)
        [envs] = list(pools)
        second, _ = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False, pools=pools)
        assert list(pools) == [envs] and not envs.closed            # the same workers ran both evaluations
        assert here == first == second
        with pytest.raises(RuntimeError, match="broken policy"):
            evaluate_policy(_Broken(), cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False, pools=pools)
        assert len(pools) == 0 and envs.closed
        evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False, pools=pools)
        [fresh] = list(pools)
    assert fresh is not envs and fresh.closed                       # closed with the pools
