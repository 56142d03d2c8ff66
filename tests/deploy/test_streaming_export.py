"""A streaming policy through ONNX: per-step levels in the denoiser graph, the rolling buffer on the host."""
import json

import numpy as np
from cadence.deploy.onnx_export import export_policy_onnx
from cadence.deploy.runtimes import OnnxRuntime, TorchRuntime

from .onnx_cases import make_obs, make_policy

OVERRIDES = {"down_dims": [16, 32], "pred_horizon": 20, "exec_horizon": 8, "sample_steps": 2,
             "streaming": {"start_steps": 3}}


def test_streaming_export_keeps_parity_across_replans(tmp_path):
    policy = make_policy("streaming", **OVERRIDES)
    export_policy_onnx(policy, tmp_path, echo=None)
    spec = json.loads((tmp_path / "policy.json").read_text())
    assert spec["process"] == {"type": "streaming", "schedule": "cosine", "train_steps": 100, "sample_steps": 2,
                               "start_steps": 3, "clip_sample": True, "obs_horizon": 2, "pred_horizon": 20,
                               "exec_horizon": 8}
    onnx_rt, torch_rt = OnnxRuntime(tmp_path, provider="cpu", seed=0), TorchRuntime(policy, seed=0)
    noise = np.random.default_rng(0).standard_normal((2, 20, 2)).astype(np.float32)
    outputs = []
    for i in range(3):                     # the first call starts the buffer, the next two roll it
        obs = make_obs(2, seed=10 + i)
        got, want = onnx_rt.predict(obs, noise if i == 0 else None), torch_rt.predict(obs, noise if i == 0 else None)
        assert np.abs(got - want).max() < 1e-4
        outputs.append(want)
    assert np.abs(outputs[1] - outputs[2]).max() > 1e-3          # the buffer moves on
    onnx_rt.reset()
    torch_rt.reset()
    assert onnx_rt.policy.process.buffer is None and torch_rt.policy.process.buffer is None
    assert policy.process.buffer is None                          # the runtimes worked on private copies
    obs = make_obs(2, seed=10)
    assert np.abs(onnx_rt.predict(obs, noise) - torch_rt.predict(obs, noise)).max() < 1e-4
    assert torch_rt.policy.process.calls == 3 + 2                 # after a reset: the start-up again
