"""The bounded readers every file from elsewhere goes through: what they allocate and refuse."""
import subprocess
import sys

import pytest
from onnx import TensorProto, helper

from cadence.untrusted import UntrustedFileError, read_json
from cadence.deploy.graph_checks import check_self_contained
from cadence.policies.caching.schedule import CacheSchedule, ScheduleError


def test_reading_a_small_file_allocates_the_file_not_the_limit(tmp_path):
    """read(limit + 1) allocated the limit first: 8 GiB for every ONNX graph."""
    path = tmp_path / "small.onnx"
    path.write_bytes(b"x" * 100)
    code = (f"from cadence.untrusted import read_bytes; assert len(read_bytes({str(path)!r}, 8 * 2 ** 30)) == 100; "
            "print('ok')")
    done = subprocess.run(["prlimit", "--as=1500000000", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-500:]


@pytest.mark.parametrize("text", ['{"a": 1e400}', '{"a": [-1e400]}'])
def test_json_floats_that_overflow_to_infinity_are_refused(tmp_path, text):
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(UntrustedFileError, match=r"x.json: not valid JSON \(1e400 overflows a float\)|-1e400"):
        read_json(tmp_path / "x.json")
    assert read_json(tmp_path / "x.json", allow_nonfinite=True)


def test_a_cache_schedule_of_numbers_too_large_for_a_float_is_one_line():
    with pytest.raises(ScheduleError, match="cache schedule"):
        CacheSchedule.from_json({"method": "uniform", "levels": [10 ** 400], "update_steps": {}, "budget": 1})


def test_a_graph_with_a_sparse_initializer_is_refused(tmp_path):
    """ONNX Runtime expands a sparse initializer whole when it opens the graph: 1 kB claimed 2 GiB."""
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(values, indices, [2 ** 29])
    sparse.values.name = "big"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    graph.sparse_initializer.append(sparse)
    model = helper.make_model(graph)
    with pytest.raises(ValueError, match="g.onnx: the graph holds sparse initializers"):
        check_self_contained(model, tmp_path / "g.onnx", ValueError)
    del model.graph.sparse_initializer[:]
    check_self_contained(model, tmp_path / "g.onnx", ValueError)
