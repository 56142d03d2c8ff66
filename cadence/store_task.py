"""A task described by its episode store: training on your own recordings, with or without a simulator.

``task=store task.dataset=PATH`` (``configs/task/store.yaml``) has no simulator
(``env_id: null``): no expert, no rollouts; the policy is validated offline on held-out episodes
(:mod:`cadence.offline_eval`). What the config leaves open is read from the store:

* ``obs_keys: []``: every ``observation.*`` key when the store has any (LeRobot's naming),
  otherwise every key but the action and the bookkeeping a recorder adds (rewards, dones,
  timestamps, indices, simulator states, ``next.*``) and every key derived from an action
  (``action.velocity`` of a ROS ``JointState`` command, robomimic's ``action_dict.*``,
  MimicGen's ``datagen_info.*``): a policy must not observe its own command;
* ``action_key``: ``action``, or ``actions`` when only that exists;
* ``fps: null``: the store's recorded rate (``cadence run`` uses it as the control rate).

:func:`resolve_task` fills them in and checks every key the task names against the store; with
a simulator, :func:`check_simulator` checks them against its observation and action spaces —
both before the first training step. :func:`task_yaml` writes the resolved task as a YAML the
user edits (``cadence task init``).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from cadence.datasets.episode_store import EpisodeStore, StoreError

log = logging.getLogger(__name__)

NOT_OBSERVATIONS = {"reward", "rewards", "done", "dones", "timestamp", "frame_index", "task_index", "index",
                    "episode_index", "sim_state", "states", "success", "processed_actions", "model_file"}
NOT_OBSERVATION_PREFIXES = ("next.", "next_", "states.", "initial_state",
                            # what an action topic or an action group imports as (a policy must not see its own command)
                            "action.", "actions.", "action_dict.", "datagen_info.")


def observation_keys(store: EpisodeStore, action_key: str) -> list[str]:
    """The store's keys a policy observes (see the module docstring)."""
    keys = [k for k in store.keys if k != action_key and not k.startswith(action_key + ".")]
    lerobot = [k for k in keys if k.startswith("observation.")]
    if lerobot:
        return lerobot
    return [k for k in keys if k not in NOT_OBSERVATIONS and not k.startswith(NOT_OBSERVATION_PREFIXES)
            and k not in ("action", "actions")]


def _action_key(store: EpisodeStore, wanted: str) -> str:
    if wanted in store.keys:
        return wanted
    present = [k for k in ("action", "actions") if k in store.keys]
    if wanted == "action" and len(present) == 1:
        return present[0]
    raise StoreError(f"{store.path}: no action key {wanted!r} (the store has {store.keys}); "
                     "set task.action_key=...")


def resolve_task(task_cfg: DictConfig) -> DictConfig:
    """``task_cfg`` with its open fields read from its store (a copy; a task with a simulator and
    every field set comes back unchanged but checked)."""
    if task_cfg.get("members"):
        return task_cfg
    task = copy.deepcopy(task_cfg)
    if task.dataset in (None, "", "???"):
        raise StoreError("task.dataset: name the episode store to train on (task.dataset=PATH)")
    if not Path(task.dataset).exists():
        hint = (f"create it with `cadence collect task={task.name}`" if task.env_id else
                "import your recordings with `cadence import` first")
        raise StoreError(f"{task.dataset}: no episode store here; {hint} or set task.dataset=PATH")
    store = EpisodeStore.open(task.dataset)
    task.action_key = _action_key(store, task.action_key)
    if not task.obs_keys:
        task.obs_keys = observation_keys(store, task.action_key)
        if not task.obs_keys:
            raise StoreError(f"{store.path}: no observation keys besides the action (keys {store.keys}); "
                             "set task.obs_keys=[...]")
        log.info("task.obs_keys from the store: %s", list(task.obs_keys))
    derived = set(task.get("obs_slices") or {})
    missing = [k for k in [*task.obs_keys, task.action_key] if k not in store.keys and k not in derived]
    if missing:
        raise StoreError(f"{store.path}: the task names keys {missing} that the store lacks (it has {store.keys})")
    if task.fps is None:
        if store.fps is None:
            raise StoreError(f"{store.path}: records no fps; set task.fps=... (cadence task init: fps=...)")
        task.fps = store.fps
    elif store.fps is not None and not np.isclose(task.fps, store.fps):
        log.warning("task.fps=%s but %s was recorded at %s fps: the policy is trained and run at task.fps",
                    task.fps, store.path, store.fps)
    return task


def check_simulator(task_cfg: DictConfig, obs_shapes: dict, action_dim: int) -> None:
    """Every observation key the policy reads is in the simulator's observations with the store's
    per-step shape, and its actions have the store's size."""
    from gymnasium import spaces

    from cadence.envs.task_env import make_env
    from cadence.task_suite import member_tasks

    for member in member_tasks(task_cfg):
        env = make_env(member)
        try:
            obs_space, act_space = env.observation_space, env.action_space
        finally:
            env.close()
        where = f"task {member.name} (env {member.env_id})"
        if isinstance(obs_space, spaces.Dict):
            absent = [k for k in obs_shapes if k not in obs_space.spaces]
            if absent:
                raise StoreError(f"{where}: observes {sorted(obs_space.spaces)}, not the task's obs_keys {absent}")
            wrong = {k: (tuple(obs_space[k].shape), s) for k, s in obs_shapes.items() if tuple(obs_space[k].shape) != s}
            if wrong:
                k, (env_shape, store_shape) = next(iter(wrong.items()))
                raise StoreError(f"{where}: observation {k!r} has shape {env_shape} in the simulator but "
                                 f"{store_shape} in {member.dataset}")
        if act_space.shape and act_space.shape[-1] != action_dim:
            raise StoreError(f"{where}: actions have {act_space.shape[-1]} dimensions in the simulator but "
                             f"{action_dim} in {member.dataset}")


def task_yaml(store_path: str, name: str, fps: float | None = None) -> str:
    """The ``task=store`` config resolved for ``store_path`` and named ``name`` (at ``fps``, or the
    store's), as YAML to edit and pass with ``--config-dir`` (``cadence task init``)."""
    from cadence.task_suite import load_task_config

    task = load_task_config("store")
    task.dataset, task.name, task.fps = str(store_path), name, fps
    resolved = OmegaConf.to_container(resolve_task(task), resolve=True)
    store = EpisodeStore.open(store_path)
    shapes = {k: list(store.features[k].shape) for k in [*resolved["obs_keys"], resolved["action_key"]]
              if k in store.keys}
    header = (f"# A task read from {store_path}: {store.n_episodes} episodes, {store.n_steps} steps at "
              f"{resolved['fps']} fps.\n# Per-step shapes: {shapes}\n"
              "# env_id: null means no simulator: training validates offline on held-out episodes\n"
              "# (train.val_episodes). Use with: cadence train --config-dir DIR task=NAME\n")
    return header + yaml.safe_dump(resolved, sort_keys=False)
