"""An export's ONNX graphs from elsewhere: self-contained, bounded, of the stated element types,
and refused at run time when they fail or give actions that are not finite."""
import json
import resource
import shutil
import time

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from cadence.deploy.export_spec import ExportFormatError, ExportRunError
from cadence.deploy.exported_policy import load_exported
from cadence.deploy.graph_checks import _size, check_bounded, check_self_contained
from cadence.deploy.loop_graph import loop_steps_of

from .onnx_cases import make_obs

TP, DA = 16, 2        # the ddpm case's chunk


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _denoiser(nodes, initializers=(), x_type=TensorProto.FLOAT, out_type=TensorProto.FLOAT, cond=16):
    """A graph with the ddpm case's denoiser signature: x (B, 16, 2), level (B,), cond (B, C) -> out."""
    vi = helper.make_tensor_value_info
    return _model(nodes, [vi("x", x_type, ["batch", TP, DA]), vi("level", TensorProto.FLOAT, ["batch"]),
                          vi("cond", TensorProto.FLOAT, ["batch", cond])],
                  [vi("out", out_type, ["batch", TP, DA])], initializers)


def _bomb(n: int) -> onnx.ModelProto:
    """A few hundred bytes that build an n x n tensor (ONNX Runtime folds it when opening the graph)."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [n, n])
    zero = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    return _denoiser([helper.make_node("ConstantOfShape", ["shape"], ["big"], value=zero),
                      helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
                      helper.make_node("Mul", ["x", "s"], ["out"])], [shape])


def _export_with(ddpm, tmp_path, denoiser: onnx.ModelProto):
    tmp_path.mkdir(exist_ok=True)
    for name in ("policy.json", "encoder.onnx"):
        shutil.copy(ddpm.export_dir / name, tmp_path)
    onnx.save(denoiser, str(tmp_path / "denoiser.onnx"))
    return tmp_path


def test_a_tiny_graph_that_builds_a_huge_tensor_is_refused_before_onnx_runtime_opens_it(ddpm, tmp_path):
    model = _bomb(16384)                                 # 2^28 elements: 1 GiB of float32
    assert model.ByteSize() < 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ExportFormatError, match="denoiser.onnx: the graph computes 268,435,\\d+ tensor elements"):
        load_exported(_export_with(ddpm, tmp_path, model), provider="cpu")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024      # KiB: nothing built
    check_bounded(_bomb(64), tmp_path / "small.onnx", ValueError)    # the same graph at a small size is fine


def test_sizes_the_inference_cannot_fix_or_that_grow_too_fast_are_refused(tmp_path):
    vi = helper.make_tensor_value_info
    nonzero = _model([helper.make_node("NonZero", ["x"], ["idx"])], [vi("x", TensorProto.FLOAT, ["batch", 4])],
                     [vi("idx", TensorProto.INT64, None)])
    with pytest.raises(ValueError, match="the size of 'idx' \\(NonZero\\)"):
        check_bounded(nonzero, tmp_path / "g.onnx", ValueError)
    square = _model([helper.make_node("MatMul", ["a", "b"], ["ab"]),              # (batch, 1) x (1, batch)
                     helper.make_node("Unsqueeze", ["ab", "axes"], ["abc"]),
                     helper.make_node("MatMul", ["abc", "c"], ["out"])],
                    [vi("a", TensorProto.FLOAT, ["batch", 1]), vi("b", TensorProto.FLOAT, [1, "batch"]),
                     vi("c", TensorProto.FLOAT, ["batch", "batch", "batch"])],
                    [vi("out", TensorProto.FLOAT, None)], [helper.make_tensor("axes", TensorProto.INT64, [1], [0])])
    with pytest.raises(ValueError, match="growing faster than the product of 2"):
        check_bounded(square, tmp_path / "g.onnx", ValueError)
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "b", [],
                               [vi("y", TensorProto.FLOAT, ["batch", 4])])
    control = _model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                     [vi("c", TensorProto.BOOL, []), vi("x", TensorProto.FLOAT, ["batch", 4])],
                     [vi("y", TensorProto.FLOAT, ["batch", 4])])
    with pytest.raises(ValueError, match="holds a subgraph"):
        check_bounded(control, tmp_path / "g.onnx", ValueError)


def test_symbolic_sizes_are_read_as_syntax_never_run():
    assert [_size("2*batch", {"batch"}, at) for at in (1, 16)] == [2, 32]
    assert _size("floor(batch/2) + candidates", {"batch", "candidates"}, 16) == 24
    assert _size(7, set(), 16) == 7
    for bad in ("__import__('os').getcwd()", "other*2", "batch**2", "[batch]", "batch.real", "(" * 300):
        with pytest.raises(ValueError):
            _size(bad, {"batch"}, 2)


def test_external_data_anywhere_in_the_model_is_refused(tmp_path):
    vi = helper.make_tensor_value_info
    constant = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    constant.data_location = TensorProto.EXTERNAL
    constant.ClearField("float_data")
    entry = constant.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    plain = _model([helper.make_node("Constant", [], ["w"], value=constant)], [], [vi("w", TensorProto.FLOAT, [2])])
    with pytest.raises(ValueError, match="keeps tensors in external files"):
        check_self_contained(plain, tmp_path / "g.onnx", ValueError)
    inner = helper.make_graph([helper.make_node("Constant", [], ["w"], value=constant)], "b", [],
                              [vi("w", TensorProto.FLOAT, [2])])
    nested = _model([helper.make_node("If", ["c"], ["w"], then_branch=inner, else_branch=inner)],
                    [vi("c", TensorProto.BOOL, [])], [vi("w", TensorProto.FLOAT, [2])])
    with pytest.raises(ValueError, match="keeps tensors in external files"):
        check_self_contained(nested, tmp_path / "g.onnx", ValueError)


def test_element_types_and_fixed_sizes_are_those_policy_json_implies(ddpm, tmp_path):
    double = _denoiser([helper.make_node("Identity", ["x"], ["out"])], x_type=TensorProto.DOUBLE,
                       out_type=TensorProto.DOUBLE)
    with pytest.raises(ExportFormatError, match="denoiser.onnx: 'x' is tensor\\(double\\), but policy.json implies "
                                                "tensor\\(float\\)"):
        load_exported(_export_with(ddpm, tmp_path / "a", double), provider="cpu")
    spec = json.loads((ddpm.export_dir / "policy.json").read_text())
    wide = _denoiser([helper.make_node("Identity", ["x"], ["out"])], cond=spec["cond_dim"] + 1)
    with pytest.raises(ExportFormatError, match="denoiser.onnx: 'cond' has shape \\['batch', \\d+\\], but policy.json "
                                                "implies \\(batch, \\d+\\)"):
        load_exported(_export_with(ddpm, tmp_path / "b", wide), provider="cpu")


def test_a_graph_that_gives_nan_or_fails_at_run_time_raises_a_one_line_error(ddpm, tmp_path):
    spec = json.loads((ddpm.export_dir / "policy.json").read_text())
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])
    policy = load_exported(_export_with(ddpm, tmp_path / "nan", _denoiser(
        [helper.make_node("Mul", ["x", "nan"], ["out"])], [nan], cond=spec["cond_dim"])), provider="cpu")
    obs = {k: torch.from_numpy(v) for k, v in make_obs(1).items()}
    with pytest.raises(ExportRunError, match="gave actions that are not finite"):
        policy.predict_chunk(obs)
    rows = helper.make_tensor("rows", TensorProto.INT64, [3], [1, TP, DA])       # every batch folded into one row
    policy = load_exported(_export_with(ddpm, tmp_path / "fold", _denoiser(
        [helper.make_node("Reshape", ["x", "rows"], ["out"])], [rows], cond=spec["cond_dim"])), provider="cpu")
    obs = {k: torch.from_numpy(v) for k, v in make_obs(3).items()}
    with pytest.raises(ExportRunError, match="ONNX Runtime failed running the export's graphs"):
        policy.predict_chunk(obs)


@pytest.mark.parametrize("scale, offset", [(1e-300, 0.0), (1e-40, 0.0), (1e39, 0.0), (1.0, 1e39)])
def test_a_normaliser_that_float32_cannot_hold_is_refused(ddpm, tmp_path, scale, offset):
    for name in ("encoder.onnx", "denoiser.onnx"):
        shutil.copy(ddpm.export_dir / name, tmp_path)
    spec = json.loads((ddpm.export_dir / "policy.json").read_text())
    spec["action_normalizer"]["scale"][0], spec["action_normalizer"]["offset"][0] = scale, offset
    (tmp_path / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(ExportFormatError, match="'action_normalizer.scale' / 'offset' map actions out of float32"):
        load_exported(tmp_path, provider="cpu")


def test_only_ascii_digits_name_a_loop_graph():
    assert loop_steps_of("loop_3") == 3
    assert [loop_steps_of(n) for n in ("loop_³", "loop_３", "loop_03", "loop_0", "loop_33")] == [None] * 5


def _size_arithmetic(rounds: int) -> onnx.ModelProto:
    """The batch size, then ``s = s * s + s`` ``rounds`` times: sizes of 1, 2, 6, 42, 1806, ... terms."""
    nodes = [helper.make_node("Shape", ["x"], ["s0"], start=0, end=1)]
    for i in range(rounds):
        nodes += [helper.make_node("Mul", [f"s{i}", f"s{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"s{i}"], [f"s{i + 1}"])]
    nodes.append(helper.make_node("Max", [f"s{rounds}", f"s{rounds}"], ["y"]))
    graph = helper.make_graph(nodes, "sizes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_size_arithmetic_that_would_take_the_shape_inference_forever_is_refused_first(tmp_path):
    """Seven rounds of ``s * s + s`` on the batch size (1.4 kB) kept the inference busy for minutes."""
    check_bounded(_size_arithmetic(2), tmp_path / "ok.onnx", ExportFormatError)
    start = time.perf_counter()
    with pytest.raises(ExportFormatError, match="sizes.onnx: the graph computes sizes of more than 256 terms"):
        check_bounded(_size_arithmetic(7), tmp_path / "sizes.onnx", ExportFormatError)
    assert time.perf_counter() - start < 5
