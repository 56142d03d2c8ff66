"""The state of a training run that is not the weights: the per-step generator that makes a resumed
run continue exactly, and the optimizer's moments in a form safetensors and JSON can hold."""
from __future__ import annotations

import torch


def step_generator(seed: int, step: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """The generator of training step ``step``; ``stream`` > 0 gives other ranks their own noise."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + step + stream * 1_000_000_007_000)
    return gen


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer moments as flat tensors (safetensors) plus per-parameter step counts (JSON)."""
    tensors, steps = {}, {}
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if name == "step":
                steps[str(i)] = float(value)
            else:
                tensors[f"optim.{i}.{name}"] = value
    return tensors, steps


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, steps: dict) -> None:
    state = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    for i, step in steps.items():
        state.setdefault(int(i), {})["step"] = torch.tensor(step)
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)
