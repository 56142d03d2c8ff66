"""The value verifier as an ONNX graph: written by the export, checked when opened, searching like
the PyTorch network, and the one an ONNX runtime's search uses."""
from __future__ import annotations

import shutil

import pytest
import torch

from cadence.deploy.export_spec import ExportFormatError
from cadence.deploy.runtimes import build_runtime
from cadence.deploy.value_graph import OnnxValueVerifier, export_value_graph, for_runtime, load_value_graph
from cadence.policies.denoiser_features import DenoiserFeatures
from cadence.policies.search import SearchSettings, search_chunk
from cadence.policies.value_verifier import ChunkValue, load_value, save_value
from tests.deploy.onnx_cases import exported, make_policy
from tests.policies.test_search import obs_tensors

LOW, HIGH = [-1.5, -1.0], [1.5, 1.5]          # the test policies' action range


def write_verifier(folder, cond_dim: int, plan_steps: int = 15, seed: int = 0, centered: bool = False,
                   denoiser=None, members: int = 1) -> ChunkValue:
    """``denoiser``: a policy whose UNet gives the verifier its input (standardized by made-up statistics)."""
    torch.manual_seed(seed)
    features = None
    if denoiser is not None:
        features = DenoiserFeatures.from_policy(denoiser)
        features.mean.normal_()
        features.std.uniform_(0.5, 2.0)
    model = ChunkValue(cond_dim, plan_steps, 2, 32, LOW, HIGH, centered, features, dropout=0.3 if features else 0.0,
                       members=members)
    save_value(model, {"train_seeds": [0, 10]}, folder)
    export_value_graph(model, folder)
    return model


@pytest.fixture(scope="module")
def policy():
    return make_policy("ddpm", down_dims=[16, 32])


@pytest.mark.parametrize("kind", ["plan", "centered", "denoiser", "ensemble"])
def test_the_graph_scores_like_the_network_at_any_batch_and_candidate_count(tmp_path, policy, kind):
    model = write_verifier(tmp_path, policy.encoder.out_dim, centered=kind == "centered",
                           denoiser=policy if kind in ("denoiser", "ensemble") else None,
                           members=3 if kind == "ensemble" else 1)
    graph = load_value_graph(tmp_path, "cpu")
    assert graph.model.centered is (kind == "centered") and graph.model.spec()["features"] == {"centered": "plan", "ensemble": "denoiser"}.get(kind, kind)
    assert isinstance(graph, OnnxValueVerifier) and graph.provider == "CPUExecutionProvider"
    for batch, k in ((1, 1), (2, 16), (5, 3)):
        cond = torch.randn(batch, model.cond_dim)
        plans = torch.empty(batch, k, 15, 2).uniform_(-1.5, 1.5)
        with torch.no_grad():
            assert torch.allclose(graph.score(cond, plans), model(cond, plans), atol=1e-5)
    obs, torch_verifier = obs_tensors(3), load_value(tmp_path)
    kept = [search_chunk(policy, obs, SearchSettings(8, verifier=v), generator=torch.Generator().manual_seed(2))
            for v in (graph, torch_verifier)]
    assert torch.equal(kept[0], kept[1])
    assert graph.train_seeds == [range(0, 10)]           # the same refusal of its training seeds


def test_a_missing_or_tampered_graph_is_refused_naming_the_file(tmp_path):
    write_verifier(tmp_path, 8)
    (tmp_path / "value.onnx").unlink()
    with pytest.raises(ExportFormatError, match="cadence export"):
        load_value_graph(tmp_path, "cpu")
    (tmp_path / "value.onnx").write_bytes(b"\x08\x07not a graph" * 50)
    with pytest.raises(ExportFormatError, match="value.onnx"):
        load_value_graph(tmp_path, "cpu")
    other = tmp_path / "other"
    write_verifier(other, 8, plan_steps=7)                 # a graph for other plans than verifier.json states
    shutil.copy(other / "value.onnx", tmp_path / "value.onnx")
    with pytest.raises(ExportFormatError, match="value.onnx.*plans"):
        load_value_graph(tmp_path, "cpu")


def test_an_onnx_runtime_searches_with_the_exports_graph_of_the_same_verifier(tmp_path_factory):
    case = exported("ddpm", tmp_path_factory)
    export_dir = tmp_path_factory.mktemp("with_verifier") / "export"
    shutil.copytree(case.export_dir, export_dir)
    write_verifier(export_dir / "verifier", case.policy.encoder.out_dim, seed=0)
    same = load_value(export_dir / "verifier")
    another = tmp_path_factory.mktemp("another")
    write_verifier(another, case.policy.encoder.out_dim, seed=1)
    onnx_runtime = build_runtime("onnx-cpu", export_dir=export_dir)
    torch_runtime = build_runtime("torch-eager", case.policy, device="cpu")
    assert isinstance(for_runtime(same, onnx_runtime, export_dir), OnnxValueVerifier)
    assert for_runtime(same, torch_runtime, export_dir) is same
    other = load_value(another)
    assert for_runtime(other, onnx_runtime, export_dir) is other      # not the verifier the export carries
    assert for_runtime("consensus", onnx_runtime, export_dir) == "consensus"
    assert for_runtime(None, onnx_runtime, export_dir) is None
    assert for_runtime(same, onnx_runtime, None) is same                  # no export to take a graph from
    shutil.move(export_dir / "verifier", another / "theirs")
    (export_dir / "verifier").symlink_to(another / "theirs")              # a link leading out of the export
    with pytest.raises(ExportFormatError, match="'verifier' 'verifier' leads out of"):
        for_runtime(same, onnx_runtime, export_dir)
