"""Simulation tasks (gymnasium), scripted experts, rollouts and their pictures."""
import gymnasium as gym

DEFAULT_TASK_ID = "cadence/BimodalReach-v0"

_TASKS = {
    DEFAULT_TASK_ID: "cadence.envs.bimodal_reach:BimodalReachEnv",
    "cadence/PushT-v0": "cadence.envs.pusht:PushTTask",
    "cadence/Lift-v0": "cadence.envs.robosuite_tasks:LiftEnv",
    "cadence/Can-v0": "cadence.envs.robosuite_tasks:CanEnv",
    "cadence/Square-v0": "cadence.envs.robosuite_tasks:SquareEnv",
}

_MAX_STEPS = {"cadence/PushT-v0": 300}

for _id, _entry in _TASKS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry, max_episode_steps=_MAX_STEPS.get(_id))
