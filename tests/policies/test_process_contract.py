"""Every process cadence ships keeps the contract of :mod:`cadence.policies.processes.base`."""
import pytest
from cadence.policies.processes.base import ProcessBase, register, process_names, REGISTRY

from .process_contract import CHECKS, check_members, check_onnx

SHIPPED = [n for n in process_names() if REGISTRY[n].__module__.startswith("cadence.")]


def test_cadence_ships_these_processes():
    assert SHIPPED == ["anchor", "ddpm", "edm", "flow", "regression", "shortcut", "streaming"]


@pytest.mark.parametrize("name", SHIPPED)
def test_members(name):
    check_members(REGISTRY[name])


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("name", SHIPPED)
def test_contract(name, check):
    CHECKS[check](name)


@pytest.mark.parametrize("name", SHIPPED)
def test_onnx_parity(name, tmp_path):
    check_onnx(name, tmp_path)


class Incomplete(ProcessBase):
    """Loss and sample, but no levels(), reference_steps() nor from_config(): half a process."""
    name, budget_steps = "incomplete", (1,)

    def loss(self, net, x0, cond, generator=None):
        return net(x0, x0.new_zeros(x0.shape[0]), cond).pow(2).mean()

    def sample(self, net, cond, shape, generator=None, noise=None, known=None):
        return net(noise, noise.new_zeros(shape[0]), cond)


def test_an_incomplete_process_is_refused_by_name():
    """A test of the contract: the missing members are named, by the registry and by the check."""
    with pytest.raises(TypeError, match=r"lacks \['levels', 'from_config', 'reference_steps'\]"):
        register(Incomplete)
    with pytest.raises(AssertionError, match=r"lacks \['levels', 'from_config', 'reference_steps'\]"):
        check_members(Incomplete)
    assert "incomplete" not in REGISTRY
