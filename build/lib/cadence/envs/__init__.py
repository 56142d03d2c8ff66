"""Simulation tasks (gymnasium), scripted experts, rollouts and their pictures."""
import gymnasium as gym

DEFAULT_TASK_ID = "cadence/BimodalReach-v0"

if DEFAULT_TASK_ID not in gym.registry:
    gym.register(DEFAULT_TASK_ID, entry_point="cadence.envs.bimodal_reach:BimodalReachEnv")
