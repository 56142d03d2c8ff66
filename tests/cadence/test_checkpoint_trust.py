"""A checkpoint folder from elsewhere, tampered with field by field: it never runs code, never
allocates without bound, never loads NaN weights, and each refusal is one line naming file and key."""
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from cadence.checkpoint import CheckpointError, load_policy
from cadence.errors import CadenceError
from tests.conftest import train_tiny_run

SENTINEL = "cadence_sentinel_module"


@pytest.fixture(scope="module")
def trained_run(tiny_store, tmp_path_factory):
    return train_tiny_run(tiny_store, tmp_path_factory.mktemp("trusted"))


@pytest.fixture
def ckpt(trained_run, tmp_path):
    """A fresh copy of the checkpoint folder to tamper with."""
    return shutil.copytree(trained_run / "checkpoint", tmp_path / "checkpoint")


def _edit_yaml(path, edit):
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _plant_sentinel(folder):
    """A module beside the checkpoint that leaves a mark if it is ever imported."""
    mark = folder / "imported.mark"
    (folder / f"{SENTINEL}.py").write_text(f"open({str(mark)!r}, 'w').write('imported')\n")
    return mark


def test_env_id_naming_a_module_is_refused_and_never_imported(ckpt, monkeypatch):
    mark = _plant_sentinel(ckpt)
    monkeypatch.syspath_prepend(str(ckpt))              # importable, as it would be from the working folder
    _edit_yaml(ckpt / "config.yaml", lambda c: c["task"].update(env_id=f"{SENTINEL}:BimodalReach-v0"))
    with pytest.raises(CadenceError, match=r"config.yaml: 'task.env_id' is 'cadence_sentinel_module:Bimo.*never "
                                           r"module:id.*env_id=\.\.\. on the command line"):
        load_policy(ckpt)
    assert not mark.exists() and SENTINEL not in sys.modules
    _edit_yaml(ckpt / "config.yaml", lambda c: c["task"].update(env_id="NoSuch/Env-v0"))
    with pytest.raises(CadenceError, match="'task.env_id' is 'NoSuch/Env-v0'"):
        load_policy(ckpt)


def test_the_users_own_env_id_is_taken_from_the_command_line(ckpt):
    _edit_yaml(ckpt / "config.yaml", lambda c: c["task"].update(env_id="somebody:Else-v0"))
    _, cfg, _ = load_policy(ckpt, env_id="cadence/BimodalReach-v0")
    assert cfg.task.env_id == "cadence/BimodalReach-v0"


def test_eval_of_a_tampered_checkpoint_is_one_line_and_imports_nothing(ckpt, tmp_path):
    mark = _plant_sentinel(ckpt)
    _edit_yaml(ckpt / "config.yaml", lambda c: c["task"].update(env_id=f"{SENTINEL}:BimodalReach-v0"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ckpt), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cadence.cli", "eval", f"checkpoint={ckpt}", "eval.episodes=1"],
                          cwd=ckpt, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and not mark.exists()
    assert proc.stderr.startswith(f"cadence eval: error: {ckpt / 'config.yaml'}: 'task.env_id'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["${oc.env:HOME}", "prefix-${oc.env:PATH}", "${policy.name}"])
def test_interpolations_in_a_saved_config_are_refused(ckpt, value):
    _edit_yaml(ckpt / "config.yaml", lambda c: c["task"].update(name=value))
    with pytest.raises(CheckpointError, match=r"config.yaml: 'task.name' holds an interpolation") as err:
        load_policy(ckpt)
    assert os.environ["HOME"] not in str(err.value).replace(str(ckpt), "")


@pytest.mark.parametrize("key, value, message", [
    ("down_dims", [16, 10 ** 6], r"'policy.down_dims\[1\]' is 1000000, outside"),
    ("down_dims", [16, 32, 64, 128, 256, 512, 1024, 2048, 4096], r"'policy.down_dims \(length\)' is 9"),
    ("diffusion_steps", 10 ** 10, "'policy.diffusion_steps' is 10000000000, outside"),
    ("sample_steps", -3, "'policy.sample_steps' is -3, outside"),
    ("pred_horizon", 10 ** 6, "'policy.pred_horizon' is 1000000, outside"),
    ("down_dims", [65_536, 65_536], "builds .* parameters, more than"),  # within each bound, too big in all
    ("n_groups", 5, "the policy config does not build a network"),      # 16 channels in 5 groups
    ("kernel_size", 4, "the policy config does not build a network.*kernel_size must be odd"),
    ("n_groups", 0, r"'policy.n_groups' is 0, outside \[1,"),                 # a divisor: was ZeroDivisionError
    ("exec_horizon", 0, r"'policy.exec_horizon' is 0, outside \[1,"),
    ("crop", 1e300, r"'policy.crop' is 1e\+300, outside"),               # floats bounded too: float32 holds them
])
def test_policy_sizes_are_bounded_before_anything_is_allocated(ckpt, key, value, message):
    _edit_yaml(ckpt / "config.yaml", lambda c: c["policy"].update({key: value}))
    with pytest.raises(CadenceError, match=message):
        load_policy(ckpt)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(obs_shapes={"state": [10 ** 9]}), r"'obs_shapes.state\[0\]' is 1000000000"),
    (lambda m: m.update(obs_shapes={"state": [4096, 4096, 4]}), "'obs_shapes.state' .* elements, more than"),
    (lambda m: m.update(action_dim="2"), "'action_dim' must be an integer"),
    (lambda m: m.update(step=1.5), "'step' must be an integer"),
    (lambda m: m.pop("normalizer_modes"), "missing key 'normalizer_modes'"),
    (lambda m: m.update(normalizer_modes={"state": "exec", "action": "limits"}), "'normalizer_modes' must map"),
    (lambda m: m.update(obs_shapes={"state": [7]}), r"the scale and offset of 'state' have shapes \[6\] and \[6\]"),
])
def test_meta_json_is_checked_key_by_key(ckpt, edit, message):
    _edit_json(ckpt / "meta.json", edit)
    with pytest.raises(CadenceError, match=message):
        load_policy(ckpt)


def test_malformed_meta_and_config_files_are_one_line(ckpt):
    (ckpt / "meta.json").write_text('{"step": NaN}')
    with pytest.raises(CadenceError, match="meta.json: not valid JSON"):
        load_policy(ckpt)
    (ckpt / "meta.json").write_text("[1, 2")
    with pytest.raises(CadenceError, match="meta.json: not valid JSON"):
        load_policy(ckpt)
    (ckpt / "config.yaml").write_text("task: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(CadenceError, match="config.yaml: not valid YAML"):
        load_policy(ckpt)


@pytest.mark.parametrize("text, message", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n", r"an alias \(\*a\)"),
    ("a: &a [*a]\n", r"an alias \(\*a\)"),                      # recursive: a RecursionError before
    ("seed: " + "1" * 5000 + "\n", "value has 5000 digits"),       # Python refuses ints of 5000 digits
    ("day: 2001-13-45\n", "month must be in 1..12"),
])
def test_yaml_aliases_and_values_python_refuses_are_one_line(ckpt, text, message):
    """Nine nested levels of nine aliases are 9^9 paths from a few hundred bytes."""
    (ckpt / "config.yaml").write_text(text)
    with pytest.raises(CadenceError, match=f"config.yaml: not valid YAML .*{message}"):
        load_policy(ckpt)


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), -1.0, 0.0])
def test_a_task_rate_that_is_not_a_positive_number_is_refused(ckpt, fps):
    _edit_yaml(ckpt / "config.yaml", lambda cfg: cfg["task"].update(fps=fps))
    with pytest.raises(CadenceError, match="config.yaml.*'task.fps'"):
        load_policy(ckpt)


@pytest.mark.parametrize("file", ["model.safetensors", "normalizer.safetensors"])
def test_non_finite_weights_and_normalizers_are_refused(ckpt, file):
    tensors = load_file(str(ckpt / file))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(ckpt / file))
    with pytest.raises(CadenceError, match=f"{file}: tensor '{name}' holds NaN or infinite values"):
        load_policy(ckpt)


@pytest.mark.parametrize("scale, offset", [(0.0, 0.0), (1e-40, 0.0), (1e-3, 1e38)])   # 1e-40: float32 subnormal
def test_a_normalizer_that_maps_out_of_float32_is_refused(ckpt, scale, offset):
    tensors = load_file(str(ckpt / "normalizer.safetensors"))
    tensors["action__scale"] = torch.full_like(tensors["action__scale"], scale)
    tensors["action__offset"] = torch.full_like(tensors["action__offset"], offset)
    save_file(tensors, str(ckpt / "normalizer.safetensors"))
    with pytest.raises(CheckpointError, match="normalizer.safetensors: the scale and offset of 'action' map values "
                                              "out of float32's range"):
        load_policy(ckpt)


@pytest.mark.parametrize("file", ["meta.json", "normalizer.safetensors"])
def test_a_named_pipe_in_place_of_a_file_is_refused_without_blocking(ckpt, file):
    (ckpt / file).unlink()
    os.mkfifo(ckpt / file)                          # nobody ever writes to it: a read would wait forever
    with pytest.raises(CadenceError, match=f"{file}: not a regular file"):
        load_policy(ckpt)


def test_float64_weights_are_checked_as_the_float32_they_become(ckpt):
    tensors = load_file(str(ckpt / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].double() + 1e300                       # finite in float64, infinite in float32
    save_file(tensors, str(ckpt / "model.safetensors"))
    with pytest.raises(CadenceError, match=f"tensor '{name}' holds NaN or infinite values \\(in float32\\)"):
        load_policy(ckpt)


def _corrupt_header(path, header: bytes):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])


@pytest.mark.parametrize("header, message", [
    (b"{not json", "corrupt safetensors header"),
    (b'{"w": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 4]}}', "has shape"),
    (b'{"w": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}', "dtype 'PICKLE'"),
    (b"[]", "not a JSON object"),
])
def test_corrupt_safetensors_headers_are_one_line(ckpt, header, message):
    _corrupt_header(ckpt / "model.safetensors", header)
    with pytest.raises(CadenceError, match=f"model.safetensors: .*{message}"):
        load_policy(ckpt)


def test_a_header_longer_than_the_file_is_refused_without_reading(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2 ** 62) + b"{}")
    with pytest.raises(CadenceError, match=r"header length 4,611,686,018,427,387,904 for a file of 10 bytes"):
        load_policy(ckpt)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(action__scale=torch.ones(5), action__offset=torch.zeros(5)),
     r"'action' have shapes \[5\] and \[5\], which do not apply to its values of shape \[2\]"),
    (lambda t: t.update(action__scale=torch.ones(2, 2), action__offset=torch.zeros(2, 2)), "'action' have shapes \\[2, 2\\]"),
])
def test_a_normalizer_that_does_not_fit_the_policys_keys_is_refused_at_load(ckpt, edit, message):
    tensors = load_file(str(ckpt / "normalizer.safetensors"))
    edit(tensors)
    save_file(tensors, str(ckpt / "normalizer.safetensors"))
    with pytest.raises(CheckpointError, match=f"normalizer.safetensors: the scale and offset of {message}"):
        load_policy(ckpt)


def test_a_normalizer_without_the_action_or_with_a_key_meta_lacks_is_refused(ckpt):
    _edit_json(ckpt / "meta.json", lambda meta: meta["normalizer_modes"].pop("action"))
    with pytest.raises(CheckpointError, match="no scale and offset for the action key 'action'"):
        load_policy(ckpt)
