"""Seeded fuzzing of every field of every file a checkpoint and an export hold.

Each case copies a real checkpoint (or export) folder, changes one thing (a YAML / JSON value
to something hostile, a safetensors header entry, bytes of a weights or graph file) and loads
it. It must end in a correct load or a one-line ``CadenceError``: never another exception, an
import of a module named in a file, or memory growth above the stated bound.
"""
import json
import random
import resource
import shutil
import struct
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from cadence.checkpoint import load_policy, save_checkpoint
from cadence.config import TrainApp
from cadence.deploy.exported_policy import load_exported
from cadence.export import export_onnx
from cadence.errors import CadenceError

from ..deploy.onnx_cases import make_policy, obs_shapes, policy_config

SENTINEL = "cadence_fuzz_sentinel"
FAST_CASES, SLOW_CASES = 240, 3000
MAX_GROWTH_BYTES = 2 * 2 ** 30     # peak memory a whole fuzz run may add


def _hostile_values(rng: random.Random):
    return rng.choice([10 ** 12, 2 ** 63, -1, 0, 1, 1.5, -1e308, "x", "", "${oc.env:HOME}", f"{SENTINEL}:Env-v0",
                       "../../../etc/passwd", None, True, [], [10 ** 9], [[1, 2], [3]], {}, {"a": 1},
                       "nan", list(range(20))])


def _leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(data, list) and data and len(data) <= 16:
        for i, value in enumerate(data):
            yield from _leaves(value, (*path, i))
    yield path


def _mutate_tree(data, rng: random.Random):
    paths = [p for p in _leaves(data) if p]
    path = rng.choice(paths)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"delete {'.'.join(map(str, path))}"
    value = _hostile_values(rng)
    parent[path[-1]] = value
    return f"{'.'.join(map(str, path))} = {value!r}"[:120]


def _mutate_text_file(path, rng, kind):
    data = yaml.safe_load(path.read_text()) if kind == "yaml" else json.loads(path.read_text())
    what = _mutate_tree(data, rng)
    if kind == "yaml":
        path.write_text(yaml.safe_dump(data))
    else:
        text = json.dumps(data)
        if rng.random() < 0.1:
            text = text.replace("1", "NaN", 1)              # a literal JSON does not allow
        path.write_text(text)
    return f"{path.name}: {what}"


def _mutate_safetensors_header(path, rng):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    what = _mutate_tree(header, rng)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return f"{path.name} header: {what}"


def _flip_bytes(path, rng):
    data = bytearray(path.read_bytes())
    positions = [rng.randrange(len(data)) for _ in range(rng.choice([1, 4, 64]))]
    for i in positions:
        data[i] ^= rng.randrange(1, 256)
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data))]              # cut short
    path.write_bytes(bytes(data))
    return f"{path.name}: {len(positions)} bytes flipped, length {len(data)}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    policy = make_policy("ddpm", down_dims=[16])
    cfg = OmegaConf.merge(OmegaConf.structured(TrainApp),
                          {"policy": policy_config("ddpm", down_dims=[16]), "run_dir": str(root)})
    save_checkpoint(root / "checkpoint", policy, cfg, 3, obs_shapes(False))
    export_onnx(root, root / "export-onnx", echo=None)
    return root / "checkpoint", root / "export-onnx"


def _case(rng, ckpt, export, work):
    """One mutated copy; returns (what was changed, the loader to call)."""
    if rng.random() < 0.6:
        folder = shutil.copytree(ckpt, work / "checkpoint")
        target = rng.choice(["config.yaml", "meta.json", "model.safetensors", "normalizer.safetensors"])
        loader = lambda: load_policy(folder)  # noqa: E731
    else:
        folder = shutil.copytree(export, work / "export")
        target = rng.choice(["policy.json", "policy.json", "encoder.onnx", "denoiser.onnx"])
        loader = lambda: load_exported(folder, provider="cpu")  # noqa: E731
    path = folder / target
    if target.endswith(".yaml"):
        what = _mutate_text_file(path, rng, "yaml")
    elif target.endswith(".json"):
        what = _mutate_text_file(path, rng, "json")
    elif target.endswith(".safetensors") and rng.random() < 0.7:
        what = _mutate_safetensors_header(path, rng)
    else:
        what = _flip_bytes(path, rng)
    return what, loader


def _fuzz(folders, tmp_path, cases, seed):
    ckpt, export = folders
    start_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(cases):
        rng = random.Random(seed * 1_000_003 + i)
        work = tmp_path / f"case{i}"
        work.mkdir()
        what, loader = _case(rng, ckpt, export, work)
        try:
            loader()
            outcomes["loaded"] += 1
        except CadenceError as exc:
            assert "\n" not in str(exc), f"case {i} ({what}): a multi-line message: {exc}"
            outcomes["refused"] += 1
        except Exception as exc:                    # noqa: BLE001 (the assertion is that none gets here)
            pytest.fail(f"case {i} ({what}): {type(exc).__name__}: {exc}")
        shutil.rmtree(work)
        assert SENTINEL not in sys.modules, f"case {i} ({what}) imported a module named in a file"
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start_peak
    assert growth < MAX_GROWTH_BYTES, f"peak memory grew by {growth / 2 ** 20:.0f} MiB"
    assert outcomes["refused"] > cases // 4 and outcomes["loaded"] > 0, outcomes     # the mutations bite
    return outcomes


def test_mutated_checkpoints_and_exports_load_or_refuse_in_one_line(folders, tmp_path):
    _fuzz(folders, tmp_path, FAST_CASES, seed=0)


@pytest.mark.slow
def test_many_more_mutations(folders, tmp_path):
    _fuzz(folders, tmp_path, SLOW_CASES, seed=1)


def test_the_fuzzer_finds_an_unchecked_loader(folders, tmp_path, monkeypatch):
    """The harness can fail: with the meta.json checks removed, some case ends in a raw error."""
    import cadence.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "read_meta", lambda path: json.loads(path.read_text()))
    with pytest.raises(pytest.fail.Exception, match=r"case \d+ \(meta.json"):
        _fuzz(folders, tmp_path, FAST_CASES, seed=0)

