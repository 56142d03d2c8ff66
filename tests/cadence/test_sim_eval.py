import copy
import multiprocessing

import numpy as np
import pytest
import torch

from cadence.checkpoint import load_policy
from cadence.envs.env_pools import EnvPools
from cadence.envs.worker_memory import WorkerMemoryError
from cadence.sim_eval import evaluate_policy, evaluation_waves, set_sample_steps, wave_seed
from tests.conftest import train_tiny_run


@pytest.fixture(scope="module")
def trained_policy(tiny_store, tmp_path_factory):
    return load_policy(train_tiny_run(tiny_store, tmp_path_factory.mktemp("run"), steps=4))


@pytest.fixture
def tiny_policy(trained_policy):
    """The trained policy and its config, a copy per test: the tests change ``cfg.eval`` (the seed
    too) and the policy's sample steps, and no change may reach a later test (shared, an earlier
    test's ``eval.seed += 1`` chose the seeds of every test after it)."""
    policy, cfg, meta = trained_policy
    return copy.deepcopy(policy), copy.deepcopy(cfg), meta


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
    cfg.eval.episodes, cfg.eval.video_format, cfg.eval.video_episodes = 1, "mp4", 1
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


def test_more_workers_than_the_memory_holds_are_refused_before_any_starts(tiny_policy):
    policy, cfg, _ = tiny_policy
    cfg.eval.episodes, cfg.eval.batch_size, cfg.eval.async_envs, cfg.eval.latency_calls = 10**6, 0, True, 0
    before = multiprocessing.active_children()
    with pytest.raises(WorkerMemoryError, match="eval.async_envs with eval.batch_size=0 starts 1000000 simulator"):
        evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    assert multiprocessing.active_children() == before


def test_waves_in_worker_processes_match_waves_here(tiny_policy):
    policy, cfg, _ = tiny_policy
    noise_seeds, predict = [], policy.predict_chunk        # the noise seed of every policy call
    policy.predict_chunk = lambda obs: (noise_seeds.append(torch.initial_seed()), predict(obs))[1]
    cfg.eval.episodes, cfg.eval.latency_calls, cfg.eval.batch_size = 3, 0, 2
    here, run_here = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    seeded_here = list(noise_seeds)
    assert list(dict.fromkeys(seeded_here)) == [wave_seed(cfg.eval.seed, 0), wave_seed(cfg.eval.seed, 1)]
    cfg.eval.async_envs = True
    workers, run_workers = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    assert noise_seeds[len(seeded_here):] == seeded_here
    assert here == workers and here["waves"] == 2 and here["batch_size"] == 2 and here["n_episodes"] == 3
    assert run_here.seeds == [cfg.eval.seed, cfg.eval.seed + 1, cfg.eval.seed + 2]
    # Either way the policy runs here, on the same batches with the same noise, and the workers only
    # step the (deterministic) simulator: the episodes are the same bit for bit.
    for a, b in zip(run_here.states, run_workers.states):
        np.testing.assert_array_equal(a, b)
    cfg.eval.async_envs, cfg.eval.batch_size = False, 0     # one wave of all three episodes
    _, whole = evaluate_policy(policy, cfg.task, cfg.policy, cfg.eval, None, "cpu", progress=False)
    for a, b in zip(whole.states, run_here.states):
        np.testing.assert_array_equal(a[0], b[0])            # the same seeds: the same starts, exactly
    # Wave 0 draws its noise from eval.seed, as the one wave does for its first two rows: the first chunk
    # of episodes 0 and 1 is the same, but only up to rounding. The network ran on 3 rows there and on 2
    # here, and its matrix products round differently with the batch size (after a chunk the states
    # differ by up to ~1e-6, bit for bit equal for some seeds only); other noise moves them by 0.1 or more.
    first = cfg.policy.exec_horizon + 1                     # the start and the first chunk's steps
    for a, b in zip(whole.states[:2], run_here.states[:2]):
        np.testing.assert_allclose(a[:first], b[:first], rtol=0, atol=1e-4)
    # wave 1 draws other noise than the one wave's third row: episode 2 goes elsewhere
    a, b = whole.states[2], run_here.states[2]
    assert len(a) != len(b) or np.abs(a - b).max() > 1e-2


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
