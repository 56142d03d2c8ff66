"""Seeded fuzzing of episode stores: a small real store written by cadence's own writer gets one
mutation (one value of one ``.zarray`` / ``.zattrs`` / ``.zgroup`` replaced by a huge int, a
negative, a string, NaN, a nested list, ... or deleted; or the bytes of one chunk flipped,
truncated, extended, emptied or replaced, its compressor header claiming 2 GiB, or the chunk
deleted) and is then
read the way ``cadence train`` reads it (``load_windows``, ``fit_normalizer``, a batch of every
window). Each case must end in a read or a :class:`CadenceError` whose message starts with the
store's path -- never another exception -- while the process runs under an address-space limit
of 1 GiB above what it had mapped before the cases, with its peak resident memory reported.

The cases run in a child process (``python -m tests.datasets.test_store_fuzz``) so that the
limit binds only them.
"""
from __future__ import annotations

import copy
import json
import math
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADROOM = 2 ** 30                     # address space the cases may map beyond the child's start
VALUES = [10 ** 12, 2 ** 63, 10 ** 30, 2 ** 31 - 1, -1, -10 ** 9, 0, "x", "1", "<f8", "|O", math.nan, math.inf,
          [[1, [2]]], [10 ** 9] * 3, None, 1.5, True, {}, [], {"id": "pickle"}]


def build_store(path: Path) -> None:
    """Three episodes in cadence's own layout, with cached statistics in ``.zattrs``."""
    from cadence.datasets.episode_store import EpisodeStore

    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path, fps=10)
    for length in (5, 9, 4):
        store.append_episode({"state": rng.normal(size=(length, 3)).astype(np.float32),
                              "action": rng.normal(size=(length, 2)),
                              "image": rng.integers(0, 256, (length, 4, 4, 3), dtype=np.uint8)})
    store.set_source({"format": "fuzz", "seed": 0})
    for key in ("state", "action"):
        store.stats(key)


def read_like_training(path: Path) -> dict:
    """What ``cadence train`` reads of a store: its windows, a normaliser fitted on their
    statistics, and a batch of every window."""
    import torch
    from omegaconf import OmegaConf

    from cadence.config import TaskConfig
    from cadence.training_data import fit_normalizer, load_windows

    task = OmegaConf.merge(OmegaConf.structured(TaskConfig),
                           {"dataset": str(path), "obs_keys": ["state", "image"], "action_key": "action"})
    dataset = load_windows(task, 2, 4)
    fit_normalizer(dataset, "limits")
    return dataset.batch(torch.arange(len(dataset)))


def _json_paths(value, prefix=()):
    """Every place in a JSON value: dict keys and list items, nested ones too."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _json_paths(child, (*prefix, key))


def mutate(store: Path, seed: int) -> str:
    """Apply the mutation of ``seed`` to ``store``; returns what it did."""
    rng = np.random.default_rng(seed)
    files = sorted(p for p in store.rglob("*") if p.is_file())
    metadata = [p for p in files if p.name.startswith(".z")]
    chunks = [p for p in files if not p.name.startswith(".")]
    if rng.random() < 0.7:
        places = [(path, place) for path in metadata for place in _json_paths(json.loads(path.read_text()))]
        path, place = places[rng.integers(len(places))]
        data = json.loads(path.read_text())
        parent = data
        for key in place[:-1]:
            parent = parent[key]
        if rng.random() < 0.2:
            del parent[place[-1]]
            what = "deleted"
        else:
            parent[place[-1]] = copy.deepcopy(VALUES[rng.integers(len(VALUES))])
            what = f"= {parent[place[-1]]!r}"
        path.write_text(json.dumps(data))
        return f"{path.relative_to(store)} {list(place)} {what}"
    path = chunks[rng.integers(len(chunks))]
    raw = bytearray(path.read_bytes())
    kind = ["flip", "truncate", "extend", "empty", "random", "header", "delete"][rng.integers(7)]
    if kind == "flip":
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(len(raw))
            raw[i] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        raw = raw[: rng.integers(len(raw))]
    elif kind == "extend":
        raw += rng.bytes(int(rng.integers(1, 64)))
    elif kind == "empty":
        raw = bytearray()
    elif kind == "random":
        raw = bytearray(rng.bytes(len(raw)))
    elif kind == "header":                 # blosc: bytes 4..8 are the decoded size
        raw[4:8] = struct.pack("<I", 2 ** 31 - 1)
    if kind == "delete":
        path.unlink()
    else:
        path.write_bytes(bytes(raw))
    return f"{path.relative_to(store)} {kind}"


def run_cases(base: Path, work: Path, seeds: range) -> None:
    """The child: every case under the address-space limit; one JSON line per case, then the
    peak resident memory before and after."""
    from cadence.errors import CadenceError

    read_like_training(base)               # imports and first-use allocations before the limit
    with open("/proc/self/status") as f:
        mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + HEADROOM, resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for seed in seeds:
        store = work / f"case{seed}.zarr"
        shutil.copytree(base, store)
        what = mutate(store, seed)
        try:
            read_like_training(store)
            outcome, message = "read", ""
        except CadenceError as exc:
            outcome, message = "refused", str(exc)
        except BaseException as exc:       # noqa: BLE001  (what the test is looking for)
            outcome, message = f"raised {type(exc).__name__}", str(exc)[:300]
        print(json.dumps({"seed": seed, "what": what, "outcome": outcome, "message": message,
                          "store": str(store)}), flush=True)
        shutil.rmtree(store)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"maxrss_kb": [before, after]}), flush=True)


def fuzz(tmp_path: Path, seeds: range) -> list[dict]:
    base = tmp_path / "base.zarr"
    build_store(base)
    read_like_training(base)                                  # the unmutated store reads
    proc = subprocess.run([sys.executable, "-m", "tests.datasets.test_store_fuzz", str(base), str(tmp_path),
                           str(seeds.start), str(seeds.stop)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    cases, (rss_before, rss_after) = lines[:-1], lines[-1]["maxrss_kb"]
    assert [c["seed"] for c in cases] == list(seeds)
    raised = [c for c in cases if c["outcome"] not in ("read", "refused")]
    assert not raised, "\n".join(f"seed {c['seed']}: {c['what']}: {c['outcome']}: {c['message']}" for c in raised)
    unnamed = [c for c in cases if c["outcome"] == "refused" and not c["message"].startswith(c["store"])]
    assert not unnamed, unnamed[:3]
    assert {c["outcome"] for c in cases} == {"read", "refused"}
    assert rss_after - rss_before < 256 * 1024, (rss_before, rss_after)     # kB: the cases' peak stays small
    return cases


def test_store_fuzz(tmp_path):
    cases = fuzz(tmp_path, range(100))
    print(f"{sum(c['outcome'] == 'refused' for c in cases)} refused, {sum(c['outcome'] == 'read' for c in cases)} read")


@pytest.mark.slow
def test_store_fuzz_long(tmp_path):
    fuzz(tmp_path, range(100, 2100))


if __name__ == "__main__":
    run_cases(Path(sys.argv[1]), Path(sys.argv[2]), range(int(sys.argv[3]), int(sys.argv[4])))
