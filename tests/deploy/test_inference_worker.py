import time

import numpy as np
import pytest

from cadence.deploy.inference_worker import InferenceRequest, InferenceWorker
from cadence.deploy.runtimes import TorchRuntime

from ..policies.test_policy import make_policy


def request(chunk=1, prefix=None):
    return InferenceRequest({"state": np.zeros((1, 2, 6), np.float32)}, t_obs=0.0, chunk=chunk, prefix=prefix)


@pytest.fixture
def worker():
    w = InferenceWorker(TorchRuntime(make_policy("flow")), start=1, inject_delay_s=(0.05, 0.05))
    yield w
    w.stop()


def test_submit_never_blocks_and_refuses_while_busy(worker):
    t = time.perf_counter()
    assert worker.submit(request(1))
    assert not worker.submit(request(2))                   # one at a time
    assert time.perf_counter() - t < 0.01                  # the caller did not wait for inference
    assert worker.poll() is None
    result = worker.wait(timeout=5)
    assert result.request.chunk == 1 and result.actions.shape == (15, 2) and result.latency >= 0.05
    assert not worker.busy and worker.submit(request(3))


def test_the_committed_prefix_comes_back_in_the_chunk(worker):
    prefix = np.array([[0.2, -0.1], [0.25, 0.0], [0.3, 0.1]], np.float32)
    worker.submit(request(prefix=prefix))
    result = worker.wait(timeout=5)
    np.testing.assert_allclose(result.actions[:3], prefix, atol=1e-5)


def test_a_failed_inference_is_reported_not_raised():
    w = InferenceWorker(TorchRuntime(make_policy("flow")), start=1)
    try:
        w.submit(InferenceRequest({"state": np.zeros((1, 3, 6), np.float32)}, 0.0, 1))   # wrong horizon
        result = w.wait(timeout=5)
        assert result.actions is None and "observation steps" in result.error
    finally:
        w.stop()


def test_reset_state_clears_a_streaming_buffer_on_the_worker_thread():
    runtime = TorchRuntime(make_policy("streaming", pred_horizon=20, exec_horizon=8, sample_steps=2,
                                       streaming={"start_steps": 2}))
    w = InferenceWorker(runtime, start=1)
    try:
        w.submit(request())
        assert w.wait(timeout=30).actions.shape == (19, 2)
        assert runtime.policy.process.buffer is not None       # mid-episode: the buffer rolls on
        w.reset_state()
        assert runtime.policy.process.buffer is None
        w.submit(request())
        assert w.wait(timeout=30).error is None and runtime.policy.process.calls == 2 + 2   # started afresh
    finally:
        w.stop()
