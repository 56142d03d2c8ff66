"""The checks a checkpoint folder from elsewhere passes before anything is built from it.

``config.yaml`` is plain data: no interpolation is resolved (``${oc.env:...}`` would leak the
environment into logs), every size in the policy config is bounded, and ``task.env_id`` must be
null (a policy trained without a simulator) or an id registered by cadence or an installed package — never ``module:id``, which gymnasium
imports. ``meta.json`` is checked key by key. The network the config builds is first built on
PyTorch's meta device (nothing allocated) and compared, parameter count and tensor by tensor,
with the weights file's header; only then is anything real allocated.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cadence.config import TrainApp
from cadence.datasets.normalizer import MODES
from cadence.envs.task_env import check_env_id
from cadence.untrusted import (LIMITS, UntrustedFileError, check_int, check_number, check_shape, interpolations,
                               read_json, read_yaml, safetensors_header)


class CheckpointError(UntrustedFileError):
    """A checkpoint is missing, incomplete, does not match its config, or fails a check."""


# policy config integers that divide or count what must exist (any key of that name, at any depth)
_POSITIVE = {"obs_horizon", "pred_horizon", "exec_horizon", "sample_steps", "diffusion_steps", "n_heads",
             "n_groups", "kernel_size"}
MAX_POLICY_NUMBER = 1e6     # |a float of the policy config| (noise levels, scales, temperatures, dropout)

# policy config fields with their own bound (LIMITS key); every other integer is a width or count
_POLICY_BOUNDS = {"obs_horizon": "horizon", "pred_horizon": "horizon", "exec_horizon": "horizon",
                  "diffusion_steps": "diffusion_steps", "sample_steps": "sample_steps",
                  "anchor.train_steps": "diffusion_steps", "anchor.trunc_steps": "diffusion_steps",
                  "anchor.start_step": "diffusion_steps", "anchor.num_anchors": "anchors",
                  "anchor.kmeans_iters": "diffusion_steps", "streaming.start_steps": "sample_steps",
                  "shortcut.max_steps": "sample_steps"}


def read_config(path: Path, env_id: str | None = None) -> DictConfig:
    """A checkpoint's ``config.yaml`` merged into the schema. ``env_id``: the user's own choice
    of environment (from the command line), used instead of the file's."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: must be a mapping of config groups, got {type(raw).__name__}")
    found = interpolations(raw)
    if found:
        raise CheckpointError(f"{path}: '{found[0]}' holds an interpolation (${{...}}); a saved config is "
                              "resolved data and none is resolved from a file")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainApp), raw)
    except Exception as exc:        # omegaconf's validation errors: one line naming the key
        raise CheckpointError(f"{path}: does not match the config schema: {' '.join(str(exc).split())[:300]}") from None
    check_policy_sizes(cfg.policy, path)
    if env_id is not None:
        cfg.task.env_id = env_id
    elif cfg.task.env_id is not None:          # null: a policy trained without a simulator
        check_env_id(cfg.task.env_id, f"{path}: 'task.env_id'")
    if cfg.task.fps is not None:               # a rate the loop and the simulated robot run at
        check_number(path, "task.fps", cfg.task.fps, low=1e-3, high=1e4)
    members = cfg.task.members
    check_int(path, "task.members (count)", len(members), 0, LIMITS["tasks"])
    for i, name in enumerate(members):
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise CheckpointError(f"{path}: 'task.members[{i}]' must be a task config name, got {name!r}")
    return cfg


def check_policy_sizes(policy_cfg, where: Any) -> None:
    """Every integer of the policy config within its stated bound (``LIMITS``), every float finite
    and within +-``MAX_POLICY_NUMBER`` (float32 arithmetic on it stays finite)."""
    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif isinstance(value, list):
                check_int(where, f"policy.{name} (length)", len(value), 0, LIMITS["dims"])
                for i, v in enumerate(value):
                    check_int(where, f"policy.{name}[{i}]", v, 1, LIMITS["width"])
            elif isinstance(value, int) and not isinstance(value, bool):
                low = 1 if name in _POSITIVE or name.rsplit(".", 1)[-1] in _POSITIVE else 0
                check_int(where, f"policy.{name}", value, low, LIMITS[_POLICY_BOUNDS.get(name, "width")])
            elif isinstance(value, float):
                check_number(where, f"policy.{name}", value, -MAX_POLICY_NUMBER, MAX_POLICY_NUMBER)
    walk(OmegaConf.to_container(policy_cfg), "")


def read_meta(path: Path) -> dict:
    """A checkpoint's ``meta.json``: format, step, observation shapes, action size, normalizer modes."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: must be a JSON object")
    for key in ("step", "obs_shapes", "action_dim", "normalizer_modes"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing key '{key}'")
    check_int(path, "step", meta["step"], 0, LIMITS["step"])
    check_int(path, "action_dim", meta["action_dim"], 1, LIMITS["action_dim"])
    shapes = meta["obs_shapes"]
    if not isinstance(shapes, dict) or not 1 <= len(shapes) <= LIMITS["obs_keys"]:
        raise CheckpointError(f"{path}: 'obs_shapes' must map 1 to {LIMITS['obs_keys']} keys to shapes")
    meta["obs_shapes"] = {k: list(check_shape(path, f"obs_shapes.{k}", s)) for k, s in shapes.items()}
    held_out = meta.get("val_episodes", [])
    if not isinstance(held_out, list) or len(held_out) > LIMITS["episodes"]:
        raise CheckpointError(f"{path}: 'val_episodes' must be a list of episode indices")
    meta["val_episodes"] = [check_int(path, "val_episodes[]", e, 0, LIMITS["episodes"]) for e in held_out]
    if any(b <= a for a, b in zip(meta["val_episodes"], meta["val_episodes"][1:])):
        raise CheckpointError(f"{path}: 'val_episodes' must be increasing episode indices")
    modes = meta["normalizer_modes"]
    if not isinstance(modes, dict) or not all(isinstance(m, str) and m in MODES for m in modes.values()):
        raise CheckpointError(f"{path}: 'normalizer_modes' must map keys to one of {MODES}")
    return meta


def check_network(policy_skeleton, weights_path: Path, where: Path) -> None:
    """``policy_skeleton`` (built on the meta device) against the weights file's header: the
    parameter count within ``LIMITS['parameters']``, the same tensor names and shapes."""
    total = sum(math.prod(v.shape) for v in policy_skeleton.state_dict().values())
    if total > LIMITS["parameters"]:
        raise CheckpointError(f"{where}: the policy config builds {total:,} parameters, more than "
                              f"{LIMITS['parameters']:,}")
    header = safetensors_header(weights_path)
    match_tensors({k: tuple(v.shape) for k, v in policy_skeleton.weights().items()},
                  {k: shape for k, (_, shape) in header.items()}, weights_path)


def match_tensors(expected: dict[str, tuple], got: dict[str, tuple], source: Any) -> None:
    """The same tensor names with the same shapes, or :class:`CheckpointError` naming the first difference."""
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: tensors do not match the config's network "
                              f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    for name, shape in expected.items():
        if tuple(got[name]) != tuple(shape):
            raise CheckpointError(f"{source}: tensor '{name}' has shape {tuple(got[name])}, but the config "
                                  f"builds {tuple(shape)}")
