"""Closed config choices are enums: a bad value fails when the command's config is composed,
naming the key and the allowed values; a good one behaves everywhere as its string."""
import json
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from hydra.errors import ConfigCompositionException

from cadence.choices import Blend, CacheMethod, Choice, ImportFormat, Network
from cadence.config_store import register
from tests.cadence.test_cli import cadence


def composed(command: str, overrides: list[str]):
    """The config exactly as ``cadence <command> overrides...`` composes it (Hydra's compose API)."""
    register()
    with initialize_config_module(version_base="1.3", config_module="cadence.configs"):
        return compose(config_name=command, overrides=overrides)


CLOSED = [   # (command, key, a value it takes, a value it refuses)
    ("train", "policy.network", "transformer", "unet2"),
    ("train", "policy.normalizer", "gaussian", "exec"),
    ("train", "policy.image_encoder", "resnet18", "resnet50"),
    ("train", "policy.transformer.attention", "causal", "sparse"),
    ("train", "policy.edm.sampler", "euler", "heun"),
    ("train", "policy.anchor.select", "sample", "max"),
    ("train", "train.precision", "bf16", "fp16"),
    ("train", "eval.video_format", "mp4", "avi"),
    ("train", "tracking.mode", "none", "offlin"),
    ("run", "control.blend", "ensemble", "average"),
    ("export", "format", "onnx", "tflite"),
    ("cache", "method", "bac", "none"),
    ("cache", "metric", "l1", "l2"),
    ("finetune", "finetune.noise.schedule", "decay", "linear"),
    ("finetune", "finetune.logprob_reduce", "sum", "max"),
    ("import", "format", "lerobot", "hdf5"),
    ("import", "missing_videos", "skip", "ignore"),
    ("import", "align", "nearest", "first"),
    ("bench_loop", "blend", "replace", "mix"),
    ("bench_cache", "metric", "mse", "kl"),
]


@pytest.mark.parametrize("command, key, good, bad", CLOSED, ids=[f"{c}:{k}" for c, k, *_ in CLOSED])
def test_a_closed_choice_takes_its_values_and_refuses_others_at_composition(command, key, good, bad):
    cfg = composed(command, [f"{key}={good}"])
    value = OmegaConf.select(cfg, key)
    assert isinstance(value, Choice) and value == good
    with pytest.raises(ConfigCompositionException) as info:
        composed(command, [f"{key}={bad}"])
    cause = " ".join(str(info.value.__cause__).split())
    assert f"Invalid value '{bad}'" in cause and f"full_key: {key}" in cause and good in cause


def test_a_list_of_choices_is_checked_element_by_element():
    assert composed("bench_scale", ["precisions=[fp32,bf16]"]).precisions == ["fp32", "bf16"]
    with pytest.raises(ConfigCompositionException):
        composed("bench_scale", ["precisions=[fp32,int8]"])


def test_a_choice_is_its_string_in_comparisons_lookups_text_and_files():
    member = Blend.freeze
    assert member == "freeze" and {"freeze": 1}[member] == 1 and member in ("replace", "freeze")
    assert f"{member}" == str(member) == "freeze" and f"{member!r}" == "'freeze'" and f"{member:>7}" == " freeze"
    assert json.dumps({"blend": member}) == '{"blend": "freeze"}'
    cfg = OmegaConf.merge(OmegaConf.structured({"network": Network.unet}), {"network": "mlp"})
    assert yaml.safe_load(OmegaConf.to_yaml(cfg)) == {"network": "mlp"}
    assert yaml.safe_dump(OmegaConf.to_container(cfg, enum_to_str=True)) == "network: mlp\n"


def test_choices_match_the_code_that_acts_on_them():
    import importlib

    from cadence import choices
    from cadence.cache import METHODS
    from cadence.import_data import FORMATS
    assert set(ImportFormat.__members__) == set(FORMATS)
    assert set(CacheMethod.__members__) == set(METHODS)
    for name, (module, attribute) in choices.SOURCES.items():
        assert tuple(getattr(choices, name)) == tuple(getattr(importlib.import_module(module), attribute)), name


def test_the_config_schema_imports_no_torch_zarr_or_simulator():
    """Every command composes its config: `cadence robot serve` (a robot's onboard computer) must
    not pay for torch (1.4 s and 190 MB) to read its own."""
    code = ("import sys; import cadence.config_store, cadence.robot_serve; "
            "print(sorted(m for m in ('torch', 'zarr', 'mujoco', 'robosuite') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_a_checkpoint_config_with_a_value_outside_a_choice_is_refused_in_one_line(tmp_path):
    from cadence.checkpoint import CheckpointError
    from cadence.checkpoint_checks import read_config
    saved = OmegaConf.to_container(composed("train", []), resolve=True, enum_to_str=True)
    saved["policy"]["normalizer"] = "exec"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(CheckpointError) as info:
        read_config(tmp_path / "config.yaml")
    message = str(info.value)
    assert "\n" not in message and "policy.normalizer" in message and "'exec'" in message


def test_the_command_line_refuses_a_bad_choice_before_doing_anything(tmp_path):
    proc = cadence("train", "policy.network=unet2", "run_dir=runs/x", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Invalid value 'unet2'" in proc.stderr and "policy.network" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
