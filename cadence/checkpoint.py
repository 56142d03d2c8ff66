"""Checkpoints: safetensors weights, the resolved YAML config and JSON metadata. No pickle.

A checkpoint folder holds::

    model.safetensors        policy weights (the EMA weights: the ones evaluated)
    normalizer.safetensors   normalizer scale/offset per key
    config.yaml              the resolved training config
    meta.json                step, observation shapes, action dim, normalizer modes
    train_state.safetensors  raw weights and optimizer moments, for resume (optional)
    train_state.json         optimizer step counts and hyper-parameters, for resume (optional)

Folders are written beside their target and swapped in, so a crash while saving leaves the
previous checkpoint intact (``checkpoint.old`` is used if the swap itself was cut short).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from cadence.cache_file import attach_block_cache
from cadence.checkpoint_checks import (CheckpointError, check_network, match_tensors,  # noqa: F401 (re-exported)
                                       read_config, read_meta)
from cadence.datasets.normalizer import Normalizer
from cadence.errors import CadenceError
from cadence.policies.caching.schedule import ScheduleError
from cadence.policies.factory import build_policy
from cadence.policies.policy import Policy
from cadence.untrusted import limit, load_safetensors

FORMAT_VERSION = 1
DIR_NAME = "checkpoint"


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Accept a checkpoint folder or a run folder holding ``checkpoint/``."""
    path = Path(path)
    for candidate in (path, path / DIR_NAME, path / f"{DIR_NAME}.old"):
        if (candidate / "model.safetensors").is_file():
            return candidate
    raise CheckpointError(f"{path}: no checkpoint here (looked for model.safetensors in it and in {DIR_NAME}/)")


def save_checkpoint(target: str | os.PathLike, policy: Policy, cfg: DictConfig, step: int,
                    obs_shapes: Mapping[str, tuple], train_state: Mapping[str, torch.Tensor] | None = None,
                    train_state_json: Mapping | None = None, extra_meta: Mapping | None = None) -> Path:
    target = Path(target)
    tmp, old = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.weights().items()}, str(tmp / "model.safetensors"))
    save_file(policy.normalizer.tensors(), str(tmp / "normalizer.safetensors"))
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    meta = {"format": FORMAT_VERSION, "step": step, "obs_shapes": {k: list(s) for k, s in obs_shapes.items()},
            "action_dim": policy.action_dim, "normalizer_modes": dict(policy.normalizer.modes), **(extra_meta or {})}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if train_state is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in train_state.items()}, str(tmp / "train_state.safetensors"))
        (tmp / "train_state.json").write_text(json.dumps(train_state_json or {}, indent=2))
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def load_config(ckpt: Path, env_id: str | None = None) -> DictConfig:
    """The checkpoint's config, checked (``checkpoint_checks.read_config``); ``env_id``: the
    user's own env id from the command line, used instead of the file's."""
    path = ckpt / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: missing config.yaml")
    return read_config(path, env_id)


def _check_normalizer_fits(normalizer: Normalizer, obs_shapes: dict[str, tuple], action_key: str, action_dim: int,
                           where: Path) -> None:
    """The normaliser has the action (``action_dim`` values) and only observation keys meta.json
    lists, each scale and offset of a shape that applies to its key's values (a scale of 5 values
    for an action of 2 failed at the first prediction)."""
    if action_key not in normalizer:
        raise CheckpointError(f"{where}: no scale and offset for the action key {action_key!r} (task.action_key)")
    for key in normalizer.modes:
        shape = (action_dim,) if key == action_key else obs_shapes.get(key)
        if shape is None:
            raise CheckpointError(f"{where}: key {key!r} is neither the action ({action_key!r}) nor an observation "
                                  f"meta.json lists {sorted(obs_shapes)}"[:300])
        scale, offset = normalizer.params(key)
        try:
            fits = scale.shape == offset.shape and np.broadcast_shapes(tuple(scale.shape), shape) == tuple(shape)
        except ValueError:
            fits = False
        if not fits:
            raise CheckpointError(f"{where}: the scale and offset of {key!r} have shapes {list(scale.shape)} and "
                                  f"{list(offset.shape)}, which do not apply to its values of shape {list(shape)}")


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu", block_cache: bool = True,
                env_id: str | None = None) -> tuple[Policy, DictConfig, dict]:
    """Rebuild the policy from config + meta, load its weights strictly; never unpickles.
    Every file is checked first (``cadence.checkpoint_checks``): bounded sizes, finite weights
    and normalizer, a registered env id (or ``env_id`` from the user's command line).
    ``block_cache``: install the cache schedules stored beside the weights (``cadence cache``)."""
    ckpt = resolve_checkpoint_dir(path)
    cfg = load_config(ckpt, env_id)
    meta = read_meta(ckpt / "meta.json")
    obs_shapes = {k: tuple(v) for k, v in meta["obs_shapes"].items()}
    norm_path = ckpt / "normalizer.safetensors"
    try:
        normalizer = Normalizer.from_tensors(load_safetensors(norm_path, max_bytes=limit("json_bytes")),
                                             meta["normalizer_modes"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{norm_path}: {exc.args[0] if exc.args else exc}") from None
    for key in normalizer.modes:
        if not normalizer.in_range(key):
            raise CheckpointError(f"{norm_path}: the scale and offset of {key!r} map values out of float32's range "
                                  "(a scale of zero or nearly, or a huge offset)")
    _check_normalizer_fits(normalizer, obs_shapes, cfg.task.action_key, meta["action_dim"], norm_path)

    def build():
        return build_policy(cfg.policy, obs_shapes, meta["action_dim"], normalizer, action_key=cfg.task.action_key)
    try:
        with torch.device("meta"):
            skeleton = build()
    except (ValueError, TypeError, AssertionError, RuntimeError, LookupError, ArithmeticError) as exc:
        raise CheckpointError(f"{ckpt / 'config.yaml'}: the policy config does not build a network "
                              f"({' '.join(str(exc).split())[:300]})") from None
    check_network(skeleton, ckpt / "model.safetensors", ckpt / "config.yaml")
    policy = build()
    load_weights(policy, load_safetensors(ckpt / "model.safetensors"), source=ckpt / "model.safetensors")
    try:                                    # the process's numbers within the bounds an export's policy.json has
        type(policy.process).from_spec(policy.process.spec(), where=str(ckpt / "config.yaml"))
    except CadenceError as exc:
        raise CheckpointError(str(exc)) from None
    if block_cache:
        try:
            attach_block_cache(policy, ckpt)
        except ScheduleError as exc:
            raise CheckpointError(str(exc)) from None
    return policy.to(device).eval(), cfg, meta


def load_weights(policy: Policy, weights: Mapping[str, torch.Tensor], source: os.PathLike | str) -> None:
    match_tensors({k: tuple(v.shape) for k, v in policy.weights().items()},
                  {k: tuple(v.shape) for k, v in weights.items()}, source)
    policy.load_state_dict(dict(weights), strict=False)
