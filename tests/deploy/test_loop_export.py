"""The whole sampling loop as one graph: parity with the host loop (with and without a committed
prefix, seeded draws, search), one graph per step count, and refusals naming what to do."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from cadence.deploy.export_spec import SPEC_FILE, ExportFormatError, read_spec
from cadence.deploy.exported_policy import load_exported
from cadence.deploy.loop_export import check_loop_steps, export_loop
from cadence.deploy.loop_graph import MAX_LOOP_STEPS, LoopSampled, exported_loop_steps, loop_steps_of
from cadence.deploy.onnx_export import ExportError, export_policy_onnx
from cadence.deploy.runtime_selection import kinds_for, select_runtime
from cadence.deploy.runtimes import build_runtime
from cadence.policies.search import SearchSettings

from .onnx_cases import CASES, make_noise, make_obs, make_policy

PARITY_ATOL = 1e-4      # task units; measured ~1e-6
STEPS = 3


@pytest.fixture(scope="module")
def loop_export(tmp_path_factory):
    policy = make_policy("ddpm", down_dims=[16, 32])
    out = export_policy_onnx(policy, tmp_path_factory.mktemp("loop") / "export", precond=False, echo=None)
    assert export_loop(policy, out, [STEPS], echo=None) == [STEPS]
    return policy, out


def test_the_loop_graph_is_the_host_loop_with_and_without_a_prefix(loop_export):
    policy, out = loop_export
    obs, noise = make_obs(4), make_noise(4)
    eager = build_runtime("torch-eager", policy, sample_steps=STEPS, device="cpu")
    loop = build_runtime("onnx-cpu-loop", policy, out, STEPS)
    assert loop.name == "onnx-cpu-loop" and loop.sample_steps == STEPS
    got = loop.predict(obs, noise)
    assert got.shape == (4, 16, 2) and np.abs(got - eager.predict(obs, noise)).max() < PARITY_ATOL
    assert np.abs(loop.predict(obs, noise + 1) - got).max() > 1e-3          # the noise goes in
    prefix = got[:, 1:4] + 0.3
    with_prefix = loop.predict(obs, noise, prefix=prefix)
    assert np.abs(with_prefix - eager.predict(obs, noise, prefix=prefix)).max() < PARITY_ATOL
    np.testing.assert_allclose(with_prefix[:, 1:4], prefix, atol=PARITY_ATOL)  # the committed actions, kept
    assert np.abs(with_prefix[:, 4:] - got[:, 4:]).max() > 1e-3             # and the rest follows them


def test_one_run_per_chunk_holds_every_step(loop_export):
    _, out = loop_export
    nodes = [n.op_type for n in onnx.load(str(out / "loop_3.onnx")).graph.node]
    single = [n.op_type for n in onnx.load(str(out / "denoiser.onnx")).graph.node]
    assert nodes.count("Conv") == STEPS * single.count("Conv")               # the network, unrolled
    graph = onnx.load(str(out / "loop_3.onnx")).graph
    weights = sum(int(np.prod(t.dims)) for t in graph.initializer)
    assert weights < 1.5 * sum(int(np.prod(t.dims)) for t in onnx.load(str(out / "denoiser.onnx")).graph.initializer)


def test_seeded_draws_and_search_match_the_host_loop(loop_export):
    _, out = loop_export
    obs = make_obs(2)
    host = build_runtime("onnx-cpu", export_dir=out, sample_steps=STEPS, seed=7)
    loop = build_runtime("onnx-cpu-loop", export_dir=out, sample_steps=STEPS, seed=7)
    assert np.abs(loop.predict(obs) - host.predict(obs)).max() < PARITY_ATOL     # the same start noise drawn
    for runtime in (host, loop):
        runtime.policy.search = SearchSettings(4, "best_of", "consensus")
    assert np.abs(loop.predict(obs) - host.predict(obs)).max() < PARITY_ATOL     # K candidates in one batch


def test_a_step_count_without_its_graph_is_refused_with_the_command(loop_export):
    _, out = loop_export
    with pytest.raises(ExportFormatError, match=r"no loop graph for 5 steps \(it has \[3\].*loop_steps=\[5\]"):
        build_runtime("onnx-cpu-loop", export_dir=out, sample_steps=5)
    sampled = load_exported(out, "cpu", loop_steps=STEPS).process
    assert isinstance(sampled, LoopSampled) and sampled.with_steps(None).steps == STEPS
    with pytest.raises(ValueError, match="samples with 3 steps, not 4"):
        sampled.with_steps(4)
    with pytest.raises(ValueError, match="separate runtimes"):
        load_exported(out, "cpu", precision="int8", loop_steps=STEPS)


def test_processes_without_a_fixed_loop_and_long_loops_are_refused():
    for process, overrides in (("anchor", CASES["anchor"][1]), ("regression", {"down_dims": [16]})):
        policy = make_policy(process, **overrides)
        with pytest.raises(ExportError, match=f"loop_steps: the {process} process has no whole-loop graph"):
            check_loop_steps(policy.process, [1])
        assert kinds_for(policy, ["onnx-cpu", "onnx-cpu-loop", "torch-cudagraph-loop"]) == ["onnx-cpu"]
    assert kinds_for(make_policy("flow", down_dims=[16]), ["onnx-cpu-loop"]) == ["onnx-cpu-loop"]
    ddpm = make_policy("ddpm", down_dims=[16]).process
    with pytest.raises(ExportError, match=f"1..{MAX_LOOP_STEPS} steps"):
        check_loop_steps(ddpm, [MAX_LOOP_STEPS + 1])
    assert check_loop_steps(ddpm, [10, 2, 10]) == [2, 10]


def test_graph_names_are_plain_step_counts():
    assert [loop_steps_of(n) for n in ("loop_10", "loop_010", "loop_0", "loop_x", "loop_", "denoiser",
                                       f"loop_{MAX_LOOP_STEPS + 1}")] == [10, None, None, None, None, None, None]


def _tampered(src, tmp_path, edit):
    out = tmp_path / "export"
    shutil.copytree(src, out)
    spec = json.loads((out / SPEC_FILE).read_text())
    edit(spec)
    (out / SPEC_FILE).write_text(json.dumps(spec))
    return out


def test_a_tampered_loop_entry_is_refused_naming_it(loop_export, tmp_path):
    _, src = loop_export
    entry = read_spec(src)["graphs"]["loop_3"]
    out = _tampered(src, tmp_path / "a", lambda s: s["graphs"].update(loop_03=entry))
    with pytest.raises(ExportFormatError, match="unknown key 'graphs.loop_03'"):
        read_spec(out)
    out = _tampered(src, tmp_path / "b", lambda s: s["graphs"]["loop_3"].update(inputs=["x"]))
    with pytest.raises(ExportFormatError, match=r"'graphs.loop_3.inputs' must be \['cond', 'noise'"):
        read_spec(out)
    out = _tampered(src, tmp_path / "c", lambda s: s["graphs"]["loop_3"].update(file="denoiser.onnx"))
    with pytest.raises(ExportFormatError, match="denoiser.onnx: graph takes"):
        load_exported(out, "cpu", loop_steps=STEPS)
    out = tmp_path / "e"
    shutil.copytree(src, out)
    data = (out / "loop_3.onnx").read_bytes()
    (out / "loop_3.onnx").write_bytes(data[: len(data) // 2])            # truncated
    with pytest.raises(ExportFormatError, match="loop_3.onnx: not a valid ONNX model"):
        load_exported(out, "cpu", loop_steps=STEPS)
    out = _tampered(src, tmp_path / "d", lambda s: s["process"].update(train_steps=2, sample_steps=2))
    with pytest.raises(ExportFormatError, match="'graphs.loop_3': the ddpm process has no loop graph at 3 steps"):
        read_spec(out)


def test_the_budget_times_the_loop_kind_at_the_steps_it_has_a_graph_for(loop_export):
    policy, out = loop_export
    assert exported_loop_steps(read_spec(out)) == [STEPS]
    budget = SimpleNamespace(runtimes=["onnx-cpu", "onnx-cpu-loop"], candidates=[1], reference_steps=STEPS,
                             steps=[STEPS, 2], max_action_error=0.05, calls=3, warmup=1)
    threads = torch.get_num_threads()
    _, chosen, measured = select_runtime(policy, budget, 1e9, [make_obs(1, seed=s) for s in (3, 4)], lambda: out,
                                         "cpu", progress=False)
    torch.set_num_threads(threads)
    labels = [m.candidate.label for m in measured]
    assert labels == ["onnx-cpu/3 steps", "onnx-cpu/2 steps", "onnx-cpu-loop/3 steps"]
    assert all(m.failure is None for m in measured)
    assert measured[2].action_error < 1e-4 and measured[1].action_error > 1e-3  # the reference's chunks
    assert chosen.candidate.sample_steps == STEPS                               # either kind: as accurate
