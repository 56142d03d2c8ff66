"""docs/extending.md's process walk-through: the example file registers a process that keeps the
whole contract, and the page shows that file as it is."""
import re
import sys
from pathlib import Path

import pytest
from cadence.policies.processes.base import REGISTRY

from .process_contract import CHECKS, check_members, check_onnx, make_policy

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "examples"))
from clean_flow import CleanFlowProcess  # noqa: E402


def test_the_example_registers_itself():
    check_members(CleanFlowProcess)
    assert REGISTRY["clean_flow"] is CleanFlowProcess


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_example_keeps_the_contract(check):
    CHECKS[check]("clean_flow")


def test_the_example_exports(tmp_path):
    check_onnx("clean_flow", tmp_path)


def test_the_example_learns_a_chunk():
    """A real process, not a stub: 150 steps on one fixed chunk and its samples come close to it."""
    import torch
    policy = make_policy("clean_flow").train()
    target = torch.linspace(-0.8, 0.8, 32).view(1, 16, 2)
    cond = torch.zeros(8, policy.encoder.out_dim)
    opt = torch.optim.Adam(policy.denoiser.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = policy.process.loss(policy.denoiser, target.expand(8, -1, -1), cond, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sample = policy.process.sample(policy.denoiser, cond, (8, 16, 2), generator=gen)
    assert (sample - target).abs().mean() < 0.1


def test_the_page_shows_the_example_file():
    page = (DOCS / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert (DOCS / "examples" / "clean_flow.py").read_text() in blocks
