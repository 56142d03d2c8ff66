"""Tiny random-init policies and their ONNX exports, each exported once per test session.

Exporting costs a few seconds per graph, so :func:`exported` caches by case name across
both test modules (a plain dict: fixtures imported into two modules would run twice).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cadence.datasets.normalizer import Normalizer
from cadence.deploy.onnx_export import export_policy_onnx
from cadence.export import export_onnx
from cadence.policies.factory import build_policy
from cadence.policies.policy import Policy
from omegaconf import OmegaConf

from cadence.checkpoint import load_policy, save_checkpoint
from cadence.config import PolicyConfig, TrainApp

STATS = {"state": {"min": np.full(6, -2.0), "max": np.full(6, 2.0)},
         "action": {"min": np.array([-1.5, -1.0]), "max": np.array([1.5, 1.5])}}
IMAGE_SHAPE = (24, 32, 3)
CHECKPOINT_STEP = 7
# name: (process, policy overrides, with an image key, exported through a checkpoint folder)
CASES = {
    "ddpm": ("ddpm", {"down_dims": [16, 32]}, False, False),
    "flow_image": ("flow", {"down_dims": [16], "image_feature_dim": 8}, True, False),
    "regression": ("regression", {"down_dims": [16]}, False, True),
    "mode": ("edm", {"network": "transformer",
                     "transformer": {"d_model": 16, "n_layers": 2, "n_heads": 2, "num_experts": 4, "top_k": 2}},
             False, False),
    "anchor": ("anchor", {"network": "anchor_decoder",
                          "anchor": {"num_anchors": 5, "d_model": 16, "n_heads": 2, "cond_tokens": 2, "ffn_mult": 2}},
               False, False),
}   # five exports, not more: each graph costs seconds (torch.export + decompositions dominate)


def policy_config(process: str, **overrides) -> PolicyConfig:
    return OmegaConf.merge(OmegaConf.structured(PolicyConfig),
                           {"process": process, "level_embed_dim": 16, "obs_feature_dim": 16, "sample_steps": 3,
                            **overrides})


def obs_shapes(image: bool) -> dict[str, tuple[int, ...]]:
    return {"state": (6,), **({"image": IMAGE_SHAPE} if image else {})}


def make_policy(process: str = "ddpm", image: bool = False, seed: int = 0, **overrides) -> Policy:
    """Same ``seed`` and architecture -> same weights, whatever the process or sample_steps."""
    torch.manual_seed(seed)
    norm = Normalizer.from_stats(STATS, {"state": "limits", "action": "limits"})
    policy = build_policy(policy_config(process, **overrides), obs_shapes(image), 2, norm).eval()
    if process == "anchor":          # anchors from random chunks; heads that start at zero made to matter
        gen = torch.Generator().manual_seed(seed)
        policy.process.fit_anchors([torch.rand(40, 16, 2, generator=gen) * 2 - 1], seed=seed)
        for layer in policy.denoiser.layers:
            torch.nn.init.normal_(layer.offset.weight, std=0.1, generator=gen)
            torch.nn.init.normal_(layer.film.weight, std=0.1, generator=gen)
    return policy


def make_obs(batch: int, image: bool = False, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = {"state": rng.uniform(-2, 2, (batch, 2, 6)).astype(np.float32)}
    if image:
        obs["image"] = rng.integers(0, 256, (batch, 2, *IMAGE_SHAPE), dtype=np.uint8)
    return obs


def make_noise(batch: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 16, 2)).astype(np.float32)


@dataclass
class Case:
    name: str
    policy: Policy              # the eager policy the export came from
    export_dir: Path
    image: bool
    output: str                 # everything printed or logged while exporting (capture_output)
    checkpoint: Path | None = None
    seconds: float = 0.0


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def capture_output():
    """Everything a user would see: file descriptors 1 and 2 (C libraries included), Python's
    sys.stdout/sys.stderr (which pytest replaces) and log records of level WARNING and above."""
    result = []
    records = _Records()
    loggers = [logging.getLogger(), logging.getLogger("torch")]
    with tempfile.TemporaryFile("w+") as sink:
        saved = [os.dup(1), os.dup(2)]
        for lg in loggers:
            lg.addHandler(records)
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield result
        finally:
            sink.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            for lg in loggers:
                lg.removeHandler(records)
            sink.seek(0)
            result.append(sink.read() + "".join(line + "\n" for line in records.lines))


_CACHE: dict[str, Case] = {}


def exported(name: str, tmp_path_factory) -> Case:
    if name in _CACHE:
        return _CACHE[name]
    process, overrides, image, via_checkpoint = CASES[name]
    policy = make_policy(process, image=image, **overrides)
    root = tmp_path_factory.mktemp(f"onnx-{name}")
    ckpt = None
    start = time.perf_counter()
    with capture_output() as output:
        if via_checkpoint:
            cfg = OmegaConf.merge(OmegaConf.structured(TrainApp),
                                  {"policy": policy_config(process, **overrides), "run_dir": str(root)})
            ckpt = save_checkpoint(root / "checkpoint", policy, cfg, CHECKPOINT_STEP, obs_shapes(image))
            policy = load_policy(root)[0]
            export_onnx(root, root / "export")
        else:     # vector-only policies infer their shapes from the normalizer; images need them
            export_policy_onnx(policy, root / "export", obs_shapes=obs_shapes(image) if image else None)
    case = Case(name, policy, root / "export", image, output[0], ckpt, time.perf_counter() - start)
    _CACHE[name] = case
    return case
