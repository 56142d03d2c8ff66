"""The int8 denoiser export: its graph is really 8-bit, the fitted steps are the largest count
within the bound, the runtime runs exactly the fitted steps in int8, and a tampered entry is refused."""
import json

import numpy as np
import onnx
import pytest

from cadence.deploy.budget import action_range
from cadence.deploy.exported_policy import INT8_FILE, SPEC_FILE, ExportFormatError, load_exported, read_spec
from cadence.deploy.int8_export import check_int8_options, chunk_errors, export_int8, fit_last_steps
from cadence.deploy.onnx_export import ExportError, export_policy_onnx
from cadence.deploy.runtimes import build_runtime
from tests.deploy.onnx_cases import CASES, IMAGE_SHAPE, make_noise, make_obs, make_policy

STEPS = [3, 10]
MAX_ERROR = 0.01
STREAMING = {"down_dims": [16], "pred_horizon": 20, "exec_horizon": 8, "sample_steps": 2, "streaming": {"start_steps": 3}}


def windows(n: int, seed: int) -> list[dict]:
    return [make_obs(1, seed=seed + i) for i in range(n)]


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    policy = make_policy("ddpm", down_dims=[16, 32])
    out = export_policy_onnx(policy, tmp_path_factory.mktemp("int8") / "export", precond=False, echo=None)
    entry = export_int8(policy, out, windows(6, seed=100), steps=STEPS, max_error=MAX_ERROR, echo=None)
    return policy, out, entry


def test_the_int8_graph_holds_8_bit_weights_and_the_spec_its_fitted_steps(int8_export):
    _, out, entry = int8_export
    ops = {node.op_type for node in onnx.load(str(out / INT8_FILE)).graph.node}
    assert "MatMulNBits" in ops and "Conv" not in ops
    spec = read_spec(out)
    assert spec["int8"] == entry and sorted(entry["last_steps"]) == sorted(map(str, STEPS))
    assert all(0 <= j <= int(s) for s, j in entry["last_steps"].items())
    assert entry["windows"] == 6 and entry["max_error"] == MAX_ERROR


def test_the_fit_is_the_largest_count_within_the_bound(int8_export):
    _, out, _ = int8_export
    policy = load_exported(out, "cpu", int8=True)
    steps = 10
    for bound in (1e-9, 0.004, 0.03):
        j = fit_last_steps(policy, windows(4, seed=300), steps, bound)
        assert 0 <= j <= steps
        assert j == 0 or _bound_holds(policy, steps, j, bound)
        assert j == steps or not _bound_holds(policy, steps, j + 1, bound)
    assert fit_last_steps(policy, windows(4, seed=300), steps, 1e-9) == 0     # int8 is not exact
    assert fit_last_steps(policy, windows(4, seed=300), steps, 0.999) == steps   # clipped chunks: at most 100%


def _bound_holds(policy, steps: int, j: int, bound: float) -> bool:
    """The fit's own check, redone: the fit draws its start noises from seed 0, one per window."""
    policy.process = policy.process.with_steps(steps)
    rng = np.random.default_rng(0)
    obs = windows(4, seed=300)
    noises = [rng.standard_normal((1, 16, 2)).astype(np.float32) for _ in obs]
    policy.denoiser.first_int8 = steps + 1
    references = chunk_errors(policy, obs, noises)
    policy.denoiser.first_int8 = steps - j
    return max(float(e.max()) for e in chunk_errors(policy, obs, noises, references)) <= bound * action_range(policy)


def test_the_runtime_runs_int8_for_exactly_the_fitted_last_steps(int8_export):
    policy, out, entry = int8_export
    obs, noise = make_obs(1, seed=5), make_noise(1, seed=6)
    fp32 = build_runtime("onnx-cpu", export_dir=out, sample_steps=10).predict(obs, noise)
    runtime = build_runtime("onnx-cpu-int8", export_dir=out, sample_steps=10)
    assert runtime.name == "onnx-cpu-int8"
    assert runtime.policy.denoiser.first_int8 == 10 - entry["last_steps"]["10"]
    calls = []
    for name in ("fp32_session", "int8_session"):
        session = getattr(runtime.policy.denoiser, name)
        run = session.run
        session_calls = lambda outputs, feeds, _run=run, _name=name: calls.append(_name) or _run(outputs, feeds)  # noqa: E731
        setattr(runtime.policy.denoiser, name, type("Counted", (), {"run": staticmethod(session_calls)})())
    got = runtime.predict(obs, noise)
    j = entry["last_steps"]["10"]
    assert calls == ["fp32_session"] * (10 - j) + ["int8_session"] * j
    assert np.isfinite(got).all()
    if j == 0:
        np.testing.assert_array_equal(got, fp32)


def test_all_steps_in_int8_change_the_chunk_but_stay_close(int8_export):
    _, out, _ = int8_export
    obs, noise = make_obs(1, seed=5), make_noise(1, seed=6)
    fp32 = build_runtime("onnx-cpu", export_dir=out, sample_steps=10).predict(obs, noise)
    runtime = build_runtime("onnx-cpu-int8", export_dir=out, sample_steps=10)
    runtime.policy.denoiser.first_int8 = 0
    got = runtime.predict(obs, noise)
    runtime.policy.denoiser.first_int8 = 10
    np.testing.assert_array_equal(runtime.predict(obs, noise), fp32)        # no int8 step: the fp32 chunk
    assert np.abs(got - fp32).max() > 0                                    # quantized: not the same numbers
    assert np.abs(got - fp32).max() < 0.2 * 3.0                            # ... but near them (range 3 and 2.5)


def test_steps_without_a_fit_and_exports_without_int8_are_refused(int8_export, tmp_path):
    policy, out, _ = int8_export
    with pytest.raises(ValueError, match=r"not 5 \(cadence export int8=true int8_steps=\[5\]\)"):
        build_runtime("onnx-cpu-int8", export_dir=out, sample_steps=5)
    plain = export_policy_onnx(policy, tmp_path / "plain", precond=False, echo=None)
    with pytest.raises(ExportFormatError, match="no int8 denoiser"):
        build_runtime("onnx-cpu-int8", export_dir=plain)


def test_options_are_checked_before_anything_is_written():
    ddpm = make_policy("ddpm", down_dims=[16]).process
    assert check_int8_options(ddpm, None, 0.005, 8) == [3] and check_int8_options(ddpm, [10, 2, 10], 0.1, 1) == [2, 10]
    for args, match in [((ddpm, None, 0.0, 8), "int8_max_error"), ((ddpm, None, 1.5, 8), "int8_max_error"),
                        ((ddpm, None, 0.005, 0), "calibration"), ((ddpm, [101], 0.005, 8), "int8_steps"),
                        ((make_policy("streaming", **STREAMING).process, None, 0.005, 8), "keeps state")]:
        with pytest.raises(ExportError, match=match):
            check_int8_options(*args)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s["int8"]["last_steps"].update({"ten": 1}), "int8.last_steps' has key 'ten'"),
    (lambda s: s["int8"]["last_steps"].update({"10": 11}), r"int8.last_steps.10' must be an integer in 0..10"),
    (lambda s: s["int8"]["last_steps"].update({"10": True}), r"int8.last_steps.10' must be an integer"),
    (lambda s: s["int8"]["last_steps"].update({"9" * 5000: 1}), "int8.last_steps' has key"),
    (lambda s: s["int8"]["last_steps"].update({"101": 1}), "not a step count this process samples with"),
    (lambda s: s["int8"].update({"max_error": "0.5"}), "int8.max_error"),
    (lambda s: s["int8"].update({"max_error": -1}), r"int8.max_error' must be a fraction in \(0, 1\)"),
    (lambda s: s["int8"].pop("bits"), "bits"),
    (lambda s: s.pop("int8"), "'graphs.denoiser_int8' and 'int8' come together"),
    (lambda s: s["graphs"].pop("denoiser_int8"), "'graphs.denoiser_int8' and 'int8' come together"),
    (lambda s: s["graphs"]["denoiser_int8"].update({"outputs": ["x"]}), "graphs.denoiser_int8.outputs"),
])
def test_a_tampered_int8_entry_is_one_error_naming_the_key(int8_export, tmp_path, edit, match):
    _, out, _ = int8_export
    spec = json.loads((out / SPEC_FILE).read_text())
    edit(spec)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ExportFormatError, match=match) as info:
        read_spec(bad)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flow_image", "mode", "anchor"])
def test_every_stateless_process_and_network_gets_an_int8_denoiser(name, tmp_path):
    process, overrides, image, _ = CASES[name]
    policy = make_policy(process, image=image, **overrides)
    shapes = {"state": (6,), **({"image": IMAGE_SHAPE} if image else {})}
    out = export_policy_onnx(policy, tmp_path, obs_shapes=shapes, precond=False, echo=None)
    entry = export_int8(policy, out, [make_obs(1, image, seed=40 + i) for i in range(3)], max_error=0.05, echo=None)
    steps = int(policy.process.sample_steps)
    assert set(entry["last_steps"]) == {str(steps)}
    ops = {node.op_type for node in onnx.load(str(out / INT8_FILE)).graph.node}
    assert "MatMulNBits" in ops
    obs, noise = make_obs(1, image, seed=5), make_noise(1, seed=6)
    fp32 = build_runtime("onnx-cpu", export_dir=out).predict(obs, noise)
    runtime = build_runtime("onnx-cpu-int8", export_dir=out)
    assert runtime.policy.denoiser.first_int8 == steps - entry["last_steps"][str(steps)]
    runtime.policy.denoiser.first_int8 = 0
    got = runtime.predict(obs, noise)
    assert np.isfinite(got).all() and np.abs(got - fp32).max() < 0.5


def test_a_truncated_int8_graph_is_one_error_naming_the_file(int8_export, tmp_path):
    import shutil
    _, out, _ = int8_export
    bad = tmp_path / "export"
    shutil.copytree(out, bad)
    data = (bad / INT8_FILE).read_bytes()
    (bad / INT8_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportFormatError, match=INT8_FILE) as info:
        build_runtime("onnx-cpu-int8", export_dir=bad, sample_steps=10)
    assert "\n" not in str(info.value)
    build_runtime("onnx-cpu", export_dir=bad, sample_steps=10)       # the fp32 kinds never open it
