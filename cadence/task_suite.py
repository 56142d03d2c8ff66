"""Multitask suites: one policy over several tasks, told apart by a one-hot ``task_id`` observation.

A suite is a task config with ``members``: names of task configs (``configs/task/*.yaml``) with
the same observation keys and action size, e.g. the default task and its one-sided variants.
Each member keeps its own environment, store and expert; :func:`member_tasks` returns them
with ``task_id`` (the one-hot of the member's position) set and ``task_id`` added to their
observation keys. Training concatenates the members' windows; evaluation runs every member
on the same seeds and reports each one and their mean.
"""
from __future__ import annotations

from importlib import resources

from omegaconf import DictConfig, OmegaConf

from cadence.config import TaskConfig
from cadence.datasets.window_dataset import TASK_ID_KEY


def is_suite(task_cfg) -> bool:
    return bool(task_cfg.get("members"))


def load_task_config(name: str) -> DictConfig:
    path = resources.files("cadence.configs").joinpath("task", f"{name}.yaml")
    if not path.is_file():
        raise ValueError(f"task suite member {name!r}: no configs/task/{name}.yaml")
    return OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(str(path)))


def member_tasks(task_cfg) -> list[DictConfig]:
    """The suite's members with their one-hot ``task_id``; a plain task is its own only member."""
    if not is_suite(task_cfg):
        return [task_cfg]
    names = list(task_cfg.members)
    if len(set(names)) != len(names):
        raise ValueError(f"task.members lists a task twice: {names}")
    members = []
    for i, name in enumerate(names):
        member = load_task_config(name)
        if member.get("members"):
            raise ValueError(f"task suite member {name!r} is itself a suite")
        member.task_id = [1.0 if j == i else 0.0 for j in range(len(names))]
        member.obs_keys = [*member.obs_keys, TASK_ID_KEY]
        members.append(member)
    return members
