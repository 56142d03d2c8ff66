"""make_env and env_module: a task config's env, and the module that defines it."""
import gymnasium as gym
import numpy as np
from omegaconf import OmegaConf

from cadence.envs import DEFAULT_TASK_ID
from cadence.envs.bimodal_reach import BimodalReachEnv
from cadence.envs.task_env import env_module, make_env


def _task(env_id, **extra):
    return OmegaConf.create({"env_id": env_id, "env_kwargs": {}, **extra})


def test_make_env_builds_the_task_and_appends_a_suite_members_task_id():
    env = make_env(_task(DEFAULT_TASK_ID), render=True)
    assert isinstance(env.unwrapped, BimodalReachEnv) and env.unwrapped.render_mode == "rgb_array"
    member = make_env(_task(DEFAULT_TASK_ID, task_id=[0.0, 1.0]))
    obs, _ = member.reset(seed=0)
    np.testing.assert_array_equal(obs["task_id"], [0.0, 1.0])


def test_env_module_is_the_registered_entry_points_module():
    assert env_module(_task(DEFAULT_TASK_ID)) == "cadence.envs.bimodal_reach"
    assert env_module(_task("cadence/Lift-v0")) == "cadence.envs.robosuite_tasks"
    if "test/ByCallable-v0" not in gym.registry:
        gym.register("test/ByCallable-v0", entry_point=lambda: BimodalReachEnv())
    assert env_module(_task("test/ByCallable-v0")) is None
