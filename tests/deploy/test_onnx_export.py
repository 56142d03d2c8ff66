import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cadence.cache_file import weights_sha256
from cadence.deploy.export_spec import ExportFormatError, read_spec
from cadence.deploy.exported_policy import load_exported
from cadence.deploy.onnx_export import ExportError, export_policy_onnx

from .onnx_cases import CASES, CHECKPOINT_STEP, exported, make_policy



@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return exported("flow_image", tmp_path_factory)


def _unet(case) -> bool:
    return CASES[case.name][1].get("network", "unet") == "unet"


def test_files_and_policy_json(case):
    precond = ["denoiser_film.onnx", "film_cond.onnx", "film_level.onnx"] if _unet(case) else []
    assert sorted(p.name for p in case.export_dir.iterdir()) == sorted(["denoiser.onnx", "encoder.onnx",
                                                                        "policy.json", *precond])
    spec = json.loads((case.export_dir / "policy.json").read_text())
    policy = case.policy
    outputs = ["out", "logits"] if CASES[case.name][0] == "anchor" else ["out"]
    if _unet(case):         # precomputed conditioning: the FiLM terms of levels and cond, and the net given them
        assert spec.pop("film_dim") == policy.denoiser.film_dim
        assert {k: spec["graphs"].pop(k) for k in ("film_level", "film_cond", "denoiser_film")} == {
            "film_level": {"file": "film_level.onnx", "inputs": ["level"], "outputs": ["terms"]},
            "film_cond": {"file": "film_cond.onnx", "inputs": ["cond"], "outputs": ["terms"]},
            "denoiser_film": {"file": "denoiser_film.onnx", "inputs": ["x", "film"], "outputs": outputs}}
        assert all(spec["export_check"][f"{k}_max_abs_err"] < 1e-4 for k in ("film_level", "film_cond", "denoiser_film"))
    else:
        assert "film_dim" not in spec
    assert spec["format_version"] == 1
    assert (spec["obs_horizon"], spec["pred_horizon"], spec["action_dim"], spec["action_key"]) == (2, 16, 2, "action")
    expected_obs = {"state": {"shape": [6], "dtype": "float32"}}
    if case.image:
        expected_obs["image"] = {"shape": [24, 32, 3], "dtype": "uint8"}
    assert spec["obs"] == expected_obs
    assert spec["graphs"] == {"encoder": {"file": "encoder.onnx", "inputs": sorted(expected_obs), "outputs": ["cond"]},
                              "denoiser": {"file": "denoiser.onnx", "inputs": ["x", "level", "cond"],
                                           "outputs": outputs}}
    norm = policy.normalizer.tensors()
    assert spec["action_normalizer"] == {"mode": "limits", "scale": norm["action__scale"].tolist(),
                                         "offset": norm["action__offset"].tolist()}
    process = {"ddpm": {"type": "ddpm", "schedule": "cosine", "train_steps": 100, "sample_steps": 3,
                        "clip_sample": True},
               "flow": {"type": "flow", "sample_steps": 3, "level_scale": 100.0},
               "edm": {"type": "edm", "sample_steps": 3, "sigma_min": 1e-3, "sigma_max": 80.0, "sigma_data": 0.5,
                       "sampler": "ddim", "clip_sample": True},
               "regression": {"type": "regression"},
               "anchor": {"type": "anchor", "schedule": "cosine", "train_steps": 1000, "trunc_steps": 50,
                          "start_step": 49, "sample_steps": 3, "select": "argmax", "temperature": 1.0}
               }[CASES[case.name][0]]
    if CASES[case.name][0] == "anchor":      # the anchors travel in policy.json: the host noises them
        assert spec["process"].pop("anchors") == policy.process.anchors.tolist()
    assert spec["process"] == process
    assert spec["cond_dim"] == 16
    assert set(spec["versions"]) == {"cadence", "torch", "onnx", "onnxscript", "opset"}
    assert spec["versions"]["torch"] == torch.__version__ and spec["versions"]["opset"] == 18
    if case.checkpoint is not None:
        assert spec["source"] == {"checkpoint": str(case.checkpoint), "step": CHECKPOINT_STEP,
                                  "weights_sha256": weights_sha256(case.checkpoint)}
    else:
        assert spec["source"] == {"checkpoint": "", "step": None}
    assert spec["export_check"]["encoder_max_abs_err"] < 1e-4 and spec["export_check"]["denoiser_max_abs_err"] < 1e-4


def test_export_prints_one_line_per_graph(case):
    lines = case.output.splitlines()
    graphs = ["encoder.onnx", "denoiser.onnx", *(["film_level.onnx", "film_cond.onnx", "denoiser_film.onnx"]
                                                 if _unet(case) else [])]
    assert len(lines) == len(graphs), case.output
    assert all(line.startswith("wrote ") and f"/{graph} (" in line for line, graph in zip(lines, graphs))


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", ["ddpm", "flow_image"])
def test_checker_and_dynamic_batch(name, tmp_path_factory):
    case = exported(name, tmp_path_factory)
    enc_path, den_path = case.export_dir / "encoder.onnx", case.export_dir / "denoiser.onnx"
    for path in (enc_path, den_path):
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        for value in [*model.graph.input, *model.graph.output]:
            assert isinstance(_dims(value)[0], str), f"{path.name}: {value.name} has a fixed batch {_dims(value)}"
    encoder = ort.InferenceSession(str(enc_path), providers=["CPUExecutionProvider"])
    denoiser = ort.InferenceSession(str(den_path), providers=["CPUExecutionProvider"])
    policy = case.policy
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 5):
        obs = {"state": torch.rand(batch, 2, 6, generator=gen) * 4 - 2}
        if case.image:
            obs["image"] = torch.randint(0, 256, (batch, 2, 24, 32, 3), generator=gen, dtype=torch.uint8)
        (cond,) = encoder.run(["cond"], {k: v.numpy() for k, v in obs.items()})
        with torch.no_grad():
            ref_cond = policy.encoder(obs, policy.normalizer)
        assert cond.shape == (batch, 16)
        np.testing.assert_allclose(cond, ref_cond.numpy(), atol=1e-5, rtol=0)
        x, level = torch.randn(batch, 16, 2, generator=gen), torch.rand(batch, generator=gen) * 100
        (out,) = denoiser.run(["out"], {"x": x.numpy(), "level": level.numpy(), "cond": ref_cond.numpy()})
        with torch.no_grad():
            ref_out = policy.denoiser(x, level, ref_cond)
        assert out.shape == (batch, 16, 2)
        np.testing.assert_allclose(out, ref_out.numpy(), atol=1e-5, rtol=0)


def test_images_stay_uint8(image):
    model = onnx.load(str(image.export_dir / "encoder.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types == {"image": onnx.TensorProto.UINT8, "state": onnx.TensorProto.FLOAT}


def test_image_policy_needs_obs_shapes(tmp_path):
    with pytest.raises(ExportError, match="obs_shapes"):
        export_policy_onnx(make_policy("ddpm", image=True, down_dims=[16]), tmp_path, echo=None)
    with pytest.raises(ExportError, match="obs_shapes has keys \\['state'\\]"):
        export_policy_onnx(make_policy("ddpm", image=True, down_dims=[16]), tmp_path, obs_shapes={"state": (6,)},
                           echo=None)
    assert not (tmp_path / "policy.json").exists()


def _set(spec, dotted, value):
    *path, last = dotted.split(".")
    for key in path:
        spec = spec[key]
    if value is _DELETE:
        del spec[last]
    else:
        spec[last] = value


_DELETE = object()


@pytest.mark.parametrize("key, value, message", [
    ("process.sample_steps", _DELETE, "missing key 'process.sample_steps'"),
    ("obs_horizon", _DELETE, "missing key 'obs_horizon'"),
    ("surprise", 1, "unknown key 'surprise'"),
    ("process.momentum", 0.9, "unknown key 'process.momentum'"),
    ("format_version", 2, "'format_version' is 2"),
    ("process.type", "gan", "'process.type' must be one of"),
    ("process.sample_steps", 500, "'process':.*sample_steps"),
    ("action_normalizer.scale", [1.0], "'action_normalizer.scale' must be 2"),
    ("action_normalizer.offset", [10 ** 400, 0], "'action_normalizer.offset' must be 2 finite numbers"),
    ("obs.state.dtype", "float64", "'obs.state.dtype'"),
    ("graphs.encoder.inputs", ["image"], "'graphs.encoder.inputs' must be"),
    ("pred_horizon", "16", "'pred_horizon' must be an integer"),
    ("pred_horizon", 10 ** 9, "'pred_horizon' is 1000000000, outside"),
    ("process.train_steps", 10 ** 10, "'process.train_steps' is 10000000000, outside"),
    ("obs.state.shape", [10 ** 9], "'obs.state.shape\\[0\\]' is 1000000000, outside"),
    ("graphs.encoder.file", "../../evil.onnx", "'graphs.encoder.file' must be a file name inside"),
])
def test_bad_policy_json_names_the_key(ddpm, tmp_path, key, value, message):
    spec = json.loads((ddpm.export_dir / "policy.json").read_text())
    _set(spec, key, value)
    (tmp_path / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(ExportFormatError, match=message) as info:
        load_exported(tmp_path)
    assert str(tmp_path / "policy.json") in str(info.value)


def test_missing_files_are_named(ddpm, tmp_path):
    with pytest.raises(ExportFormatError, match="policy.json: not found"):
        load_exported(tmp_path)
    shutil.copy(ddpm.export_dir / "policy.json", tmp_path)
    assert read_spec(tmp_path)["process"]["type"] == "ddpm"
    with pytest.raises(ExportFormatError, match="'graphs.encoder.file' names 'encoder.onnx'"):
        load_exported(tmp_path)
    (tmp_path / "policy.json").write_text("{not json")
    with pytest.raises(ExportFormatError, match="not valid JSON"):
        load_exported(tmp_path)


def test_swapped_graph_is_caught(ddpm, tmp_path):
    for name in ("policy.json", "encoder.onnx"):
        shutil.copy(ddpm.export_dir / name, tmp_path)
    shutil.copy(ddpm.export_dir / "encoder.onnx", tmp_path / "denoiser.onnx")
    with pytest.raises(ExportFormatError, match="denoiser.onnx: graph takes"):
        load_exported(tmp_path, provider="cpu")


def test_graph_files_from_elsewhere_are_checked(ddpm, tmp_path):
    for name in ("policy.json", "encoder.onnx", "denoiser.onnx"):
        shutil.copy(ddpm.export_dir / name, tmp_path)
    (tmp_path / "denoiser.onnx").write_bytes(b"\x08\x07" + bytes(range(256)) * 4)       # not a protobuf model
    with pytest.raises(ExportFormatError, match="denoiser.onnx: not a valid ONNX model"):
        load_exported(tmp_path, provider="cpu")
    model = onnx.load(str(ddpm.export_dir / "denoiser.onnx"))
    onnx.external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, str(tmp_path / "denoiser.onnx"))                              # weights outside the graph
    with pytest.raises(ExportFormatError, match="denoiser.onnx: the graph keeps tensors in external files"):
        load_exported(tmp_path, provider="cpu")
    graph = (ddpm.export_dir / "denoiser.onnx").read_bytes()
    conv = b"\x22\x04Conv"                                                          # a node's op_type field
    assert conv in graph
    (tmp_path / "denoiser.onnx").write_bytes(graph.replace(conv, b"\x22\x04\x8eonv", 1))   # not UTF-8
    with pytest.raises(ExportFormatError, match="denoiser.onnx: the sizes of some of the graph's tensors cannot"):
        load_exported(tmp_path, provider="cpu")
    shutil.copy(ddpm.export_dir / "denoiser.onnx", tmp_path)
    spec = json.loads((tmp_path / "policy.json").read_text())
    spec["cond_dim"] += 1                                                           # disagrees with the graphs
    (tmp_path / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(ExportFormatError, match="encoder.onnx: 'cond' has shape"):
        load_exported(tmp_path, provider="cpu")


def test_graph_path_may_not_lead_out_of_the_export(ddpm, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    for name in ("policy.json", "encoder.onnx"):
        shutil.copy(ddpm.export_dir / name, export)
    shutil.copy(ddpm.export_dir / "denoiser.onnx", tmp_path / "outside.onnx")
    (export / "denoiser.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(ExportFormatError, match="'graphs.denoiser.file' 'denoiser.onnx' leads out of"):
        load_exported(export, provider="cpu")


def test_export_with_non_finite_parity_writes_no_policy_json(tmp_path):
    policy = make_policy("ddpm")
    with torch.no_grad():
        next(policy.denoiser.parameters()).fill_(float("nan"))        # both runtimes give NaN: no parity
    with pytest.raises(ExportError, match="differs from PyTorch by nan"):
        export_policy_onnx(policy, tmp_path, echo=None)
    assert not (tmp_path / "policy.json").exists()
