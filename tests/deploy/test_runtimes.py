import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cadence.deploy import onnx_providers, runtimes
from cadence.deploy.runtimes import (
    OnnxRuntime,
    Runtime,
    TorchRuntime,
    available_runtime_kinds,
    build_runtime,
)


from .onnx_cases import CASES, exported, make_noise, make_obs, make_policy

# ONNX Runtime vs eager PyTorch, same noise, in task units. Measured on CPU: ~1e-6.
PARITY_ATOL = 1e-4
# bfloat16 autocast vs float32 (task units, actions span ~3): measured ~1e-2.
BF16_ATOL = 0.1
BATCH = 4
HAS_CUDA = torch.cuda.is_available()



def _eager(policy, obs, noise, **extra):
    with torch.no_grad():
        chunk = policy.predict_chunk({k: torch.from_numpy(v) for k, v in obs.items()},
                                     noise=torch.from_numpy(noise), **extra)
    return chunk.actions.numpy()


def test_onnx_matches_eager_pytorch(case):
    obs, noise = make_obs(BATCH, case.image), make_noise(BATCH)
    reference = _eager(case.policy, obs, noise)
    onnx_rt = OnnxRuntime(case.export_dir, provider="cpu")
    torch_rt = TorchRuntime(case.policy)
    got = onnx_rt.predict(obs, noise)
    assert got.shape == (BATCH, 16, 2) and got.dtype == np.float32
    err = float(np.abs(got - reference).max())
    print(f"{case.name}: max |onnx - eager| = {err:.2e} (task units)")
    assert err < PARITY_ATOL
    np.testing.assert_array_equal(torch_rt.predict(obs, noise), reference)   # the very same computation
    assert onnx_rt.start == torch_rt.start == 1
    # the noise matters (except for regression, which ignores it): parity is not trivially zero
    if CASES[case.name][0] != "regression":
        assert np.abs(onnx_rt.predict(obs, noise + 1) - got).max() > 1e-3


@pytest.mark.parametrize("process", ["ddpm", "flow", "edm"])
def test_sample_steps_override_matches_a_policy_built_with_them(process, tmp_path_factory):
    policy = make_policy(process, down_dims=[16])              # 3 steps
    original = policy.process
    five = make_policy(process, down_dims=[16], sample_steps=5)  # same weights, 5 steps
    obs, noise = make_obs(2), make_noise(2)
    runtime = TorchRuntime(policy, sample_steps=5)
    assert runtime.sample_steps == 5
    np.testing.assert_array_equal(runtime.predict(obs, noise), _eager(five, obs, noise))
    assert not np.allclose(runtime.predict(obs, noise), _eager(policy, obs, noise))
    assert policy.process is original and original.sample_steps == 3     # the caller's policy is untouched
    assert TorchRuntime(policy).sample_steps == 3


def test_onnx_sample_steps_override(ddpm):
    obs, noise = make_obs(2), make_noise(2)
    runtime = OnnxRuntime(ddpm.export_dir, provider="cpu", sample_steps=6)
    assert runtime.sample_steps == 6
    reference = _eager(TorchRuntime(ddpm.policy, sample_steps=6).policy, obs, noise)
    assert np.abs(runtime.predict(obs, noise) - reference).max() < PARITY_ATOL
    assert OnnxRuntime(ddpm.export_dir, provider="cpu").sample_steps == 3


def test_bad_sample_steps():
    with pytest.raises(ValueError, match="regression.*exactly one"):
        make_policy("regression", down_dims=[16]).process.with_steps(4)
    assert make_policy("regression", down_dims=[16]).process.with_steps(1).sample_steps == 1
    with pytest.raises(ValueError, match="train_steps"):
        make_policy("ddpm", down_dims=[16]).process.with_steps(101)
    with pytest.raises(ValueError, match="positive int"):
        make_policy("flow", down_dims=[16]).process.with_steps(0)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only errors")
@pytest.mark.parametrize("options, what", [({"dtype": "float16"}, "dtype fp16"),
                                           ({"mode": "cudagraph"}, "mode 'cudagraph'"),
                                           ({"mode": "cudagraph-loop"}, "mode 'cudagraph-loop'")])
def test_gpu_only_options_are_clear_errors_on_cpu(options, what):
    policy = make_policy("flow", down_dims=[16])
    with pytest.raises(ValueError, match=f"{what} needs a CUDA device"):
        TorchRuntime(policy, device="cpu", **options)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        TorchRuntime(policy, device="cuda", **options)


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA-graph capture of the whole loop needs a CUDA GPU")
@pytest.mark.parametrize("process", ["ddpm", "flow", "edm"])
def test_the_whole_loop_as_one_cuda_graph_matches_eager(process):
    policy = make_policy(process, down_dims=[16])
    obs, noise = make_obs(2), make_noise(2)
    runtime = TorchRuntime(policy, device="cuda", mode="cudagraph-loop")
    eager = TorchRuntime(policy, device="cuda")
    prefix = eager.predict(obs, noise)[:, 1:4] + 0.2
    for _ in range(2):                      # captured on the first call, replayed on the second
        assert np.abs(runtime.predict(obs, noise) - eager.predict(obs, noise)).max() < PARITY_ATOL
        assert np.abs(runtime.predict(obs, noise, prefix) - eager.predict(obs, noise, prefix)).max() < PARITY_ATOL
    with pytest.raises(ValueError, match="samples with 3 steps, not 5"):
        runtime.policy.process.with_steps(5)


def test_unknown_dtype_and_mode():
    policy = make_policy("flow", down_dims=[16])
    with pytest.raises(ValueError, match="dtype must be one of"):
        TorchRuntime(policy, dtype="int8")
    with pytest.raises(ValueError, match="mode must be one of"):
        TorchRuntime(policy, mode="jit")


@pytest.mark.parametrize("options, reason", [({"dtype": "bfloat16"}, runtimes.cpu_bf16_reason),
                                             ({"mode": "compile"}, runtimes.cpu_compile_reason)])
def test_cpu_bf16_and_compile_run_where_the_machine_has_them(options, reason):
    policy = make_policy("flow", down_dims=[16])
    if reason() is not None:
        with pytest.raises(RuntimeError, match="native bf16|C\\+\\+ compiler"):
            TorchRuntime(policy, device="cpu", **options)
        return
    obs, noise = make_obs(2), make_noise(2)
    got = TorchRuntime(policy, device="cpu", **options).predict(obs, noise)
    assert got.dtype == np.float32 and np.abs(got - _eager(policy, obs, noise)).max() < BF16_ATOL


def test_low_precision_path_runs_and_stays_close(monkeypatch):
    # CPU autocast exercises the wrapping a GPU runs, with or without native bf16 here.
    monkeypatch.setattr(runtimes, "cpu_bf16_reason", lambda: None)
    policy = make_policy("ddpm", image=True, down_dims=[16], image_feature_dim=8)
    obs, noise = make_obs(2, image=True), make_noise(2)
    runtime = TorchRuntime(policy, dtype="bfloat16")
    assert runtime.name == "torch-eager-cpu-bf16"
    assert {p.dtype for p in runtime.policy.denoiser.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in policy.parameters()} == {torch.float32}          # the caller's copy is untouched
    got = runtime.predict(obs, noise)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - _eager(policy, obs, noise)).max() < BF16_ATOL


def test_auto_provider_picks_cpu_without_noise(ddpm, capfd, caplog):
    caplog.set_level(logging.WARNING)
    runtime = OnnxRuntime(ddpm.export_dir, provider="auto", threads=1)
    runtime.predict(make_obs(1), make_noise(1))
    if not HAS_CUDA:
        assert runtime.name == "onnx-cpu" and runtime.provider == "CPUExecutionProvider"
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not caplog.records


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only error")
def test_forced_cuda_provider_without_gpu_is_a_clear_error(ddpm):
    with pytest.raises(RuntimeError, match="provider 'cuda' requested but"):
        OnnxRuntime(ddpm.export_dir, provider="cuda")
    with pytest.raises(RuntimeError, match="provider 'tensorrt' requested but no CUDA GPU is visible"):
        OnnxRuntime(ddpm.export_dir, provider="tensorrt")
    with pytest.raises(RuntimeError, match="provider 'tensorrt' requested but"):
        build_runtime("onnx-tensorrt", export_dir=ddpm.export_dir)
    with pytest.raises(ValueError, match="provider must be one of"):
        OnnxRuntime(ddpm.export_dir, provider="rocm")


def test_tensorrt_engines_are_cached_per_graph_content(tmp_path, monkeypatch):
    """ONNX Runtime names an engine after the graph's path and structure, not its weights: a retrained
    export at the same path must not find the old engine, so each content gets its own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    graph = tmp_path / "denoiser.onnx"
    graph.write_bytes(b"weights one")
    first = onnx_providers._tensorrt_options(graph, None)
    graph.write_bytes(b"weights two")
    second = onnx_providers._tensorrt_options(graph, "fp16")
    assert first["trt_engine_cache_path"] != second["trt_engine_cache_path"]
    assert Path(first["trt_engine_cache_path"]).parent == tmp_path / "cache" / "cadence" / "tensorrt"
    assert (first["trt_fp16_enable"], second["trt_fp16_enable"], second["trt_int8_enable"]) == (False, True, False)
    assert onnx_providers._tensorrt_options(graph, "int8_qdq")["trt_int8_enable"]
    graph.write_bytes(b"weights one")
    assert onnx_providers._tensorrt_options(graph, None) == first
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    with pytest.raises(RuntimeError, match="cannot create TensorRT's engine cache .*a-file.*XDG_CACHE_HOME"):
        onnx_providers._tensorrt_options(graph, None)


def test_available_kinds_and_factory(ddpm):
    kinds = available_runtime_kinds()
    assert kinds[0] == "torch-eager" and "onnx-cpu" in kinds and set(kinds) <= set(runtimes.KINDS)
    if not HAS_CUDA:
        optional = [k for k, why in (("torch-compile", runtimes.cpu_compile_reason()),
                                     ("torch-bf16", runtimes.cpu_bf16_reason())) if why is None]
        assert kinds == ["torch-eager", "torch-precond", *optional, "onnx-cpu", "onnx-cpu-precond", "onnx-cpu-int8",
                         "onnx-cpu-loop"]
    eager = build_runtime("torch-eager", policy=ddpm.policy, sample_steps=2, device="cpu")
    onnx_rt = build_runtime("onnx-cpu", export_dir=ddpm.export_dir, sample_steps=2)
    assert (eager.name, eager.sample_steps) == ("torch-eager-cpu-fp32", 2)
    assert (onnx_rt.name, onnx_rt.sample_steps) == ("onnx-cpu", 2)
    assert isinstance(eager, Runtime) and isinstance(onnx_rt, Runtime)
    obs, noise = make_obs(3), make_noise(3)
    assert np.abs(eager.predict(obs, noise) - onnx_rt.predict(obs, noise)).max() < PARITY_ATOL
    with pytest.raises(ValueError, match="unknown runtime kind 'tensorrt'"):
        build_runtime("tensorrt", policy=ddpm.policy)
    with pytest.raises(ValueError, match="needs export_dir"):
        build_runtime("onnx-cpu", policy=ddpm.policy)
    with pytest.raises(ValueError, match="needs a PyTorch policy"):
        build_runtime("torch-eager", export_dir=ddpm.export_dir)
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            build_runtime("torch-fp16", policy=ddpm.policy)


def test_seeded_runtimes_repeat_without_noise(ddpm):
    obs = make_obs(2)
    a, b = (OnnxRuntime(ddpm.export_dir, provider="cpu", seed=5) for _ in range(2))
    first = a.predict(obs)
    np.testing.assert_array_equal(first, b.predict(obs))
    assert not np.array_equal(first, a.predict(obs))          # the generator advances
    t1, t2 = TorchRuntime(ddpm.policy, seed=5), TorchRuntime(ddpm.policy, seed=5)
    np.testing.assert_array_equal(t1.predict(obs), t2.predict(obs))


def test_prefix_is_passed_in_task_units(ddpm):
    seen = []

    def spy(obs, generator=None, noise=None, **extra):
        seen.append(extra)
        return original(obs, generator=generator, noise=noise)

    prefix = np.full((2, 3, 2), 0.25, dtype=np.float64)
    for runtime in (TorchRuntime(ddpm.policy), OnnxRuntime(ddpm.export_dir, provider="cpu")):
        seen.clear()
        original = runtime.policy.predict_chunk
        runtime.policy.predict_chunk = spy
        runtime.predict(make_obs(2), make_noise(2))
        runtime.predict(make_obs(2), make_noise(2), prefix=prefix)
        assert seen[0]["prefix"] is None
        assert seen[1]["prefix"].dtype == torch.float32 and seen[1]["prefix"].shape == (2, 3, 2)
        assert torch.all(seen[1]["prefix"] == 0.25)


def test_prefix_parity(case):
    obs, noise = make_obs(BATCH, case.image), make_noise(BATCH)
    prefix = np.random.default_rng(4).uniform(-1, 1, (BATCH, 4, 2)).astype(np.float32)
    reference = _eager(case.policy, obs, noise, prefix=torch.from_numpy(prefix))
    got = OnnxRuntime(case.export_dir, provider="cpu").predict(obs, noise, prefix=prefix)
    assert np.abs(got - reference).max() < PARITY_ATOL
    np.testing.assert_array_equal(TorchRuntime(case.policy).predict(obs, noise, prefix=prefix), reference)


def test_onnx_observation_errors(tmp_path_factory):
    case = exported("flow_image", tmp_path_factory)
    runtime = OnnxRuntime(case.export_dir, provider="cpu")
    obs = make_obs(2, image=True)
    with pytest.raises(KeyError, match="lacks \\['image'\\]"):
        runtime.predict({"state": obs["state"]})
    with pytest.raises(TypeError, match="'image' must be uint8"):
        runtime.predict({**obs, "image": obs["image"].astype(np.float32)})
    with pytest.raises(ValueError, match="'state' has shape \\(2, 3, 6\\)"):
        runtime.predict({**obs, "state": np.zeros((2, 3, 6), np.float32)})
    with pytest.raises(ValueError, match="noise must have shape \\(2, 16, 2\\)"):
        runtime.predict(obs, noise=np.zeros((2, 8, 2), np.float32))
    assert runtime.policy.obs_spec["image"] == {"shape": [24, 32, 3], "dtype": "uint8"}
    with pytest.raises(NotImplementedError, match="inference-only"):
        runtime.policy.compute_loss({})


def test_precomputed_conditioning_runtimes_match_their_direct_twins(ddpm):
    obs, other, noise = make_obs(3), make_obs(3, seed=7), make_noise(3)
    prefix = np.full((3, 2, 2), 0.25, dtype=np.float32)
    pairs = [(build_runtime("torch-eager", policy=ddpm.policy, device="cpu"),
              build_runtime("torch-precond", policy=ddpm.policy, device="cpu"), 1e-5),
             (build_runtime("onnx-cpu", export_dir=ddpm.export_dir), build_runtime("onnx-cpu-precond",
                                                                                   export_dir=ddpm.export_dir),
              PARITY_ATOL)]
    for direct, precond, atol in pairs:
        assert "-precond" in precond.name
        for o, p in ((obs, None), (other, None), (obs, prefix)):       # a new observation, then inpainting
            np.testing.assert_allclose(precond.predict(o, noise, p), direct.predict(o, noise, p), atol=atol, rtol=0)
    assert build_runtime("torch-precond", policy=ddpm.policy, device="cpu").policy.denoiser.precompute_conditioning
    assert not ddpm.policy.denoiser.precompute_conditioning             # the caller's policy is untouched


def test_precomputed_conditioning_needs_a_unet_and_its_graphs(tmp_path_factory, tmp_path):
    import json
    import shutil

    from cadence.deploy.export_spec import ExportFormatError

    mode = exported("mode", tmp_path_factory)                           # a transformer: no FiLM terms
    with pytest.raises(ValueError, match="needs a UNet denoiser, not TransformerDenoiser"):
        build_runtime("torch-precond", policy=mode.policy, device="cpu")
    with pytest.raises(ExportFormatError, match="no precomputed-conditioning graphs"):
        build_runtime("onnx-cpu-precond", export_dir=mode.export_dir)
    ddpm = exported("ddpm", tmp_path_factory)
    broken = tmp_path / "export"
    shutil.copytree(ddpm.export_dir, broken)
    spec = json.loads((broken / "policy.json").read_text())
    good = json.dumps(spec)
    # tampered or truncated: each a one-line error naming the file or key, before any graph runs
    film_dim = spec["film_dim"]
    cases = [(lambda sp: sp["graphs"].pop("film_cond"), None, "needs all of graphs"),
             (lambda sp: sp.update(film_dim=film_dim + 1), None, "'terms' has shape"),
             (lambda sp: sp.update(film_dim=10**9), None, "film_dim"),
             (lambda sp: sp.update(film_dim="wide"), None, "film_dim"),
             (lambda sp: None, "denoiser_film.onnx", "not a valid ONNX model")]
    for tamper, truncate, words in cases:
        spec = json.loads(good)
        tamper(spec)
        (broken / "policy.json").write_text(json.dumps(spec))
        if truncate:
            graph = broken / truncate
            graph.write_bytes(graph.read_bytes()[:1000])
        with pytest.raises(ExportFormatError, match=words) as err:
            build_runtime("onnx-cpu-precond", export_dir=broken)
        assert "\n" not in str(err.value)
