"""The reduced-precision denoisers (int8, fp16, int8_qdq): each graph really is 8-bit / float16 /
QDQ int8, the fitted steps are the largest count within the bound, the runtime runs exactly the
fitted steps in reduced precision, and a tampered entry is refused. The fp16 graph (casts around
the operators without a float16 kernel) and the QDQ graph (TensorRT's) run on ONNX Runtime's CPU
provider here: their kinds are a GPU's, their numbers are checked on the CPU."""
import json
import shutil

import numpy as np
import onnx
import pytest

from cadence.deploy.budget import action_range
from cadence.deploy.export_spec import SPEC_FILE, ExportFormatError, read_spec
from cadence.deploy.exported_policy import load_exported
from cadence.deploy.onnx_export import ExportError, export_policy_onnx
from cadence.deploy.reduced_precision import check_reduced_options, chunk_errors, export_reduced, fit_last_steps
from cadence.deploy.runtimes import OnnxRuntime, build_runtime
from tests.deploy.onnx_cases import CASES, IMAGE_SHAPE, make_noise, make_obs, make_policy

STEPS = [3, 10]
MAX_ERROR = 0.01
STREAMING = {"down_dims": [16], "pred_horizon": 20, "exec_horizon": 8, "sample_steps": 2, "streaming": {"start_steps": 3}}
INT8_FILE = "denoiser_int8.onnx"


def windows(n: int, seed: int) -> list[dict]:
    return [make_obs(1, seed=seed + i) for i in range(n)]


def reduced_runtime(out, precision: str, steps: int = 10) -> OnnxRuntime:
    """The export's reduced-precision runtime on the CPU provider (onnx-cpu-int8; fp16's kinds need a GPU)."""
    return OnnxRuntime(out, provider="cpu", sample_steps=steps, precision=precision)


PRECISIONS = ["int8", "fp16", "int8_qdq"]


@pytest.fixture(scope="module", params=PRECISIONS)
def reduced_export(request, tmp_path_factory):
    policy = make_policy("ddpm", down_dims=[16, 32])
    out = export_policy_onnx(policy, tmp_path_factory.mktemp(request.param) / "export", precond=False, echo=None)
    entry = export_reduced(policy, out, request.param, windows(6, seed=100), steps=STEPS, max_error=MAX_ERROR,
                           echo=None)
    return policy, out, entry, request.param


def test_the_graph_holds_reduced_weights_and_the_spec_its_fitted_steps(reduced_export):
    _, out, entry, precision = reduced_export
    graph = onnx.load(str(out / f"denoiser_{precision}.onnx")).graph
    if precision == "int8":
        assert {"MatMulNBits"} <= {node.op_type for node in graph.node} and "Conv" not in {n.op_type for n in graph.node}
        assert entry["bits"] == 8 and entry["block"] == 32
    elif precision == "int8_qdq":
        ops = [node.op_type for node in graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
        producers = {o: n.op_type for n in graph.node for o in n.output}
        convs = [n for n in graph.node if n.op_type == "Conv"]
        assert all(producers.get(n.input[1]) == "DequantizeLinear" for n in convs)        # int8 weights
        gemms = [n for n in graph.node if n.op_type in ("Gemm", "MatMul")]
        assert gemms and not any(producers.get(i) == "DequantizeLinear" for n in gemms for i in n.input)  # float32
    else:
        big = [t for t in graph.initializer if np.prod(t.dims) >= 64]          # the weights, not shape constants
        assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*graph.input, *graph.output])
    if precision != "int8":
        assert set(entry) == {"max_error", "windows", "last_steps"}
    spec = read_spec(out)
    assert spec[precision] == entry and sorted(entry["last_steps"]) == sorted(map(str, STEPS))
    assert all(0 <= j <= int(s) for s, j in entry["last_steps"].items())
    assert entry["windows"] == 6 and entry["max_error"] == MAX_ERROR


def test_the_fit_is_the_largest_count_within_the_bound(reduced_export):
    _, out, _, precision = reduced_export
    policy = load_exported(out, "cpu", precision=precision)
    steps = 10
    for bound in (1e-9, 0.0005, 0.004, 0.03):
        j = fit_last_steps(policy, windows(4, seed=300), steps, bound)
        assert 0 <= j <= steps
        assert j == 0 or _bound_holds(policy, steps, j, bound)
        assert j == steps or not _bound_holds(policy, steps, j + 1, bound)
    assert fit_last_steps(policy, windows(4, seed=300), steps, 1e-9) == 0     # neither is exact
    assert fit_last_steps(policy, windows(4, seed=300), steps, 0.999) == steps   # clipped chunks: at most 100%


def _bound_holds(policy, steps: int, j: int, bound: float) -> bool:
    """The fit's own check, redone: the fit draws its start noises from seed 0, one per window."""
    policy.process = policy.process.with_steps(steps)
    rng = np.random.default_rng(0)
    obs = windows(4, seed=300)
    noises = [rng.standard_normal((1, 16, 2)).astype(np.float32) for _ in obs]
    policy.denoiser.first_reduced = steps + 1
    references = chunk_errors(policy, obs, noises)
    policy.denoiser.first_reduced = steps - j
    return max(float(e.max()) for e in chunk_errors(policy, obs, noises, references)) <= bound * action_range(policy)


def test_the_runtime_runs_reduced_precision_for_exactly_the_fitted_last_steps(reduced_export):
    policy, out, entry, precision = reduced_export
    obs, noise = make_obs(1, seed=5), make_noise(1, seed=6)
    fp32 = build_runtime("onnx-cpu", export_dir=out, sample_steps=10).predict(obs, noise)
    runtime = reduced_runtime(out, precision)
    assert runtime.name == f"onnx-cpu-{precision}"
    assert runtime.policy.denoiser.first_reduced == 10 - entry["last_steps"]["10"]
    calls = []
    for name in ("fp32_session", "reduced_session"):
        session = getattr(runtime.policy.denoiser, name)
        run = session.run
        session_calls = lambda outputs, feeds, _run=run, _name=name: calls.append(_name) or _run(outputs, feeds)  # noqa: E731
        setattr(runtime.policy.denoiser, name, type("Counted", (), {"run": staticmethod(session_calls)})())
    got = runtime.predict(obs, noise)
    j = entry["last_steps"]["10"]
    assert calls == ["fp32_session"] * (10 - j) + ["reduced_session"] * j
    assert np.isfinite(got).all()
    if j == 0:
        np.testing.assert_array_equal(got, fp32)


def test_all_steps_in_reduced_precision_change_the_chunk_but_stay_close(reduced_export):
    _, out, _, precision = reduced_export
    obs, noise = make_obs(1, seed=5), make_noise(1, seed=6)
    fp32 = build_runtime("onnx-cpu", export_dir=out, sample_steps=10).predict(obs, noise)
    runtime = reduced_runtime(out, precision)
    runtime.policy.denoiser.first_reduced = 0
    got = runtime.predict(obs, noise)
    runtime.policy.denoiser.first_reduced = 10
    np.testing.assert_array_equal(runtime.predict(obs, noise), fp32)        # no int8 step: the fp32 chunk
    assert np.abs(got - fp32).max() > 0                                    # reduced: not the same numbers
    near = {"int8": 0.2, "fp16": 0.01, "int8_qdq": 0.2}[precision]
    assert np.abs(got - fp32).max() < near * 3.0                           # ... but near them (range 3 and 2.5)


def test_steps_without_a_fit_and_exports_without_the_graph_are_refused(reduced_export, tmp_path):
    policy, out, _, precision = reduced_export
    match = rf"not 5 \(cadence export {precision}=true {precision}_steps=\[5\]\)"
    with pytest.raises(ValueError, match=match):
        reduced_runtime(out, precision, steps=5)
    plain = export_policy_onnx(policy, tmp_path / "plain", precond=False, echo=None)
    with pytest.raises(ExportFormatError, match=f"no {precision} denoiser"):
        reduced_runtime(plain, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_options_are_checked_before_anything_is_written(precision):
    ddpm = make_policy("ddpm", down_dims=[16]).process
    assert check_reduced_options(ddpm, precision, None, 0.005, 8) == [3]
    assert check_reduced_options(ddpm, precision, [10, 2, 10], 0.1, 1) == [2, 10]
    for args, match in [((None, 0.0, 8), f"{precision}_max_error"), ((None, 1.5, 8), f"{precision}_max_error"),
                        ((None, 0.005, 0), "calibration"), (([101], 0.005, 8), f"{precision}_steps")]:
        with pytest.raises(ExportError, match=match):
            check_reduced_options(ddpm, precision, *args)
    with pytest.raises(ExportError, match="keeps state"):
        check_reduced_options(make_policy("streaming", **STREAMING).process, precision, None, 0.005, 8)
    with pytest.raises(ExportError, match="precision: one of"):
        check_reduced_options(ddpm, "int4", None, 0.005, 8)


@pytest.mark.parametrize("edit,match", [
    (lambda s, p: s[p]["last_steps"].update({"ten": 1}), "{p}.last_steps' has key 'ten'"),
    (lambda s, p: s[p]["last_steps"].update({"10": 11}), r"{p}.last_steps.10' must be an integer in 0..10"),
    (lambda s, p: s[p]["last_steps"].update({"10": True}), r"{p}.last_steps.10' must be an integer"),
    (lambda s, p: s[p]["last_steps"].update({"9" * 5000: 1}), "{p}.last_steps' has key"),
    (lambda s, p: s[p]["last_steps"].update({"101": 1}), "not a step count this process samples with"),
    (lambda s, p: s[p].update({"max_error": "0.5"}), "{p}.max_error"),
    (lambda s, p: s[p].update({"max_error": -1}), r"{p}.max_error' must be a fraction in \(0, 1\)"),
    (lambda s, p: s[p].pop("windows"), "windows"),
    (lambda s, p: s[p].update({"scale": 2}), "scale"),
    (lambda s, p: s.pop(p), "'graphs.denoiser_{p}' and '{p}' come together"),
    (lambda s, p: s["graphs"].pop(f"denoiser_{p}"), "'graphs.denoiser_{p}' and '{p}' come together"),
    (lambda s, p: s["graphs"][f"denoiser_{p}"].update({"outputs": ["x"]}), "graphs.denoiser_{p}.outputs"),
])
def test_a_tampered_entry_is_one_error_naming_the_key(reduced_export, tmp_path, edit, match):
    _, out, _, precision = reduced_export
    spec = json.loads((out / SPEC_FILE).read_text())
    edit(spec, precision)
    match = match.replace("{p}", precision)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ExportFormatError, match=match) as info:
        read_spec(bad)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", ["flow_image", "mode", "anchor"])
def test_every_stateless_process_and_network_gets_a_reduced_denoiser(name, precision, tmp_path):
    process, overrides, image, _ = CASES[name]
    policy = make_policy(process, image=image, **overrides)
    shapes = {"state": (6,), **({"image": IMAGE_SHAPE} if image else {})}
    out = export_policy_onnx(policy, tmp_path, obs_shapes=shapes, precond=False, echo=None)
    entry = export_reduced(policy, out, precision, [make_obs(1, image, seed=40 + i) for i in range(3)],
                           max_error=0.05, echo=None)
    steps = int(policy.process.sample_steps)
    assert set(entry["last_steps"]) == {str(steps)}
    if precision == "int8":
        assert "MatMulNBits" in {node.op_type for node in onnx.load(str(out / INT8_FILE)).graph.node}
    obs, noise = make_obs(1, image, seed=5), make_noise(1, seed=6)
    fp32 = build_runtime("onnx-cpu", export_dir=out).predict(obs, noise)
    runtime = reduced_runtime(out, precision, steps)
    assert runtime.policy.denoiser.first_reduced == steps - entry["last_steps"][str(steps)]
    runtime.policy.denoiser.first_reduced = 0
    got = runtime.predict(obs, noise)
    near = 1.0 if precision == "int8_qdq" else 0.5          # static int8 activations at every step: the coarsest
    assert np.isfinite(got).all() and np.abs(got - fp32).max() < near


def test_a_truncated_reduced_graph_is_one_error_naming_the_file(reduced_export, tmp_path):
    _, out, _, precision = reduced_export
    bad, file = tmp_path / "export", f"denoiser_{precision}.onnx"
    shutil.copytree(out, bad)
    data = (bad / file).read_bytes()
    (bad / file).write_bytes(data[: len(data) // 3])
    with pytest.raises(ExportFormatError, match=file) as info:
        reduced_runtime(bad, precision)
    assert "\n" not in str(info.value)
    build_runtime("onnx-cpu", export_dir=bad, sample_steps=10)       # the fp32 kinds never open it
