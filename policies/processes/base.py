"""What a generative process is, and the registry of processes by name.

A process turns a denoiser ``net(x, level, cond)`` into action chunks: what the network learns
(``loss``) and how it samples (``sample``), over normalised chunks (B, Tp, Da). Everything else
in cadence finds a process through :data:`REGISTRY` (``policy.process=<name>`` and an export's
``policy.json`` ``process.type``), so a registered process also describes itself:

- ``from_config(policy_cfg, action_dim, num_tasks)``: built from the ``policy`` config group;
- ``spec()`` / ``from_spec(spec, where)``: written to and restored from ``policy.json`` (the
  fields are declared in ``spec_fields``, so an untrusted file is checked key by key);
- ``check_steps(steps)``: the step counts it can sample with (``with_steps`` copies it at one);
- ``budget_steps`` and ``reference_steps()``: what the latency budget tries, and the setting
  its action error is measured against.

:class:`ProcessBase` holds the defaults (stateless, no task input, no extra conditioning, a
``(Tp, Da)`` chunk per call and a level per sample). ``docs/extending.md`` walks through adding
one; ``tests/policies/test_process_contract.py`` checks every registered process.
"""
from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from cadence.errors import CadenceError
from cadence.untrusted import LIMITS, UntrustedFileError, check_int, check_number

from .known_actions import KnownActions

# Members a registered process class must have (beyond ProcessBase's defaults).
REQUIRED = ("name", "budget_steps", "spec_fields", "loss", "sample", "levels", "from_config", "reference_steps")


class UnknownProcessError(CadenceError, ValueError):
    """A process name no registered process has."""


class ProcessSpecError(CadenceError, ValueError):
    """A process entry of policy.json that does not describe a process this version can build."""


@runtime_checkable
class Process(Protocol):
    """The members the rest of cadence uses (see the module docstring)."""

    name: ClassVar[str]
    budget_steps: ClassVar[tuple[int, ...]]
    spec_fields: ClassVar[Mapping[str, "Field"]]
    uses_task: ClassVar[bool]
    level_per_action: ClassVar[bool]
    sample_steps: int
    extra_cond_dim: int

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
             ) -> torch.Tensor: ...

    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None) -> torch.Tensor: ...

    def levels(self) -> list[float]: ...

    def check_steps(self, steps: int) -> None: ...

    def reference_steps(self) -> int: ...

    def spec(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def keep_rows(self, rows) -> None: ...


# --- policy.json fields ---------------------------------------------------------------------------

class Field:
    """One key of a process's policy.json entry: checked on the way in, plain JSON on the way out.
    ``attr``: the process attribute it is written from (default: the key)."""

    def __init__(self, attr: str | None = None):
        self.attr = attr

    def check(self, where: str, name: str, value: Any) -> Any:
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return value


class Int(Field):
    def __init__(self, limit: str, low: int = 1, attr: str | None = None):
        super().__init__(attr)
        self.limit, self.low = limit, low

    def check(self, where, name, value):
        return check_int(where, name, value, self.low, LIMITS[self.limit])

    def dump(self, value):
        return int(value)


POSITIVE = 1e-6         # the least a scale, temperature or noise level read from a file may be


class Number(Field):
    """A finite number in [low, high]: bounded, so float32 arithmetic on it stays finite."""

    def __init__(self, low: float = -1e6, high: float = 1e6, attr: str | None = None):
        super().__init__(attr)
        self.low, self.high = low, high

    def check(self, where, name, value):
        return check_number(where, name, value, self.low, self.high)

    def dump(self, value):
        return float(value)


class Flag(Field):
    def check(self, where, name, value):
        if not isinstance(value, bool):
            raise UntrustedFileError(f"{where}: '{name}' must be true or false, got {value!r}"[:300])
        return value

    def dump(self, value):
        return bool(value)


class Choice(Field):
    def __init__(self, *choices: str, attr: str | None = None):
        super().__init__(attr)
        self.choices = choices

    def check(self, where, name, value):
        if value not in self.choices:
            raise UntrustedFileError(f"{where}: '{name}' must be one of {list(self.choices)}, got {value!r}"[:300])
        return value


class Const(Choice):
    """A key with one possible value (e.g. ``schedule: cosine``); not a constructor argument."""

    def __init__(self, value: str):
        super().__init__(value)
        self.value = value


# --- the base class and the registry ---------------------------------------------------------------

class ProcessBase:
    """Defaults for the optional members of :class:`Process`."""

    name: ClassVar[str]
    budget_steps: ClassVar[tuple[int, ...]]
    spec_fields: ClassVar[Mapping[str, Field]] = {}
    uses_task: ClassVar[bool] = False          # sample/loss take task= (B,) from the task_id observation
    level_per_action: ClassVar[bool] = False   # the denoiser's level is (B, Tp), not (B,)
    graph_outputs: ClassVar[tuple[str, ...]] = ("out",)   # the exported denoiser's outputs
    network: ClassVar[str | None] = None       # the one policy.network it runs with (None: any chunk denoiser)
    fits_data: ClassVar[bool] = False          # fit_data() runs on the training chunks before training
    extra_cond_dim: int = 0                    # width the process appends to the observation conditioning
    loop_graph: ClassVar[bool] = False         # sample() is a fixed sequence of tensor operations given the start
                                               # noise, cond and known entries (no draws, no state, no choices):
                                               # the whole loop exports as one graph (cadence.deploy.loop_export)
    finetune_method: ClassVar[str | None] = None   # `cadence finetune`: "reinflow" (needs velocity(net, x, t,
                                                   # cond, steps, step)) | "dppo" (a DDIM chain); None: not fine-tunable
    sample_steps: int

    def reset(self) -> None:
        """Forget per-episode state (none by default)."""

    @property
    def keeps_state(self) -> bool:
        """Whether chunks depend on earlier ones (the process has its own ``reset``, e.g. streaming's
        rolling buffer): such a process cannot be sampled side by side or judged one chunk at a time."""
        return type(self).reset is not ProcessBase.reset

    def keep_rows(self, rows) -> None:
        """Keep the per-episode state of these batch rows only (none by default)."""

    def fit_data(self, chunks_per_task: list[torch.Tensor], seed: int) -> str:
        """Fit parameters to each task's normalised training chunks (N, Tp, Da) when ``fits_data``;
        returns a line for the log."""
        raise NotImplementedError(f"process {self.name!r} fits nothing to the data (fits_data is False)")

    def check_steps(self, steps: int) -> None:
        """Raise ValueError unless this process can sample with ``steps`` network calls."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sample_steps must be a positive int, got {steps!r}")

    def allows_steps(self, steps: int) -> bool:
        try:
            self.check_steps(steps)
        except ValueError:
            return False
        return True

    def with_steps(self, steps: int | None):
        """A private copy sampling with ``steps`` network calls (None: keep its own)."""
        process = copy.deepcopy(self)
        if steps is not None:
            process.check_steps(steps)
            process.sample_steps = steps
        return process

    def check_policy(self, obs_horizon: int, pred_horizon: int, action_dim: int) -> None:
        """Raise ValueError if this process cannot serve a policy of these sizes (none by default)."""

    def graph_chunk(self, pred_horizon: int, action_dim: int) -> tuple[int, ...]:
        """Shape of one sample of the exported denoiser's ``x`` (and ``out``)."""
        return (pred_horizon, action_dim)

    def level_range(self) -> float:
        """Largest level the network sees (export traces levels in [0, this]): 100 unless overridden."""
        return 100.0

    def clean_input(self, noise: float) -> tuple[float, float] | None:
        """How the network sees a chunk ``x0`` with no noise drawn at the fraction ``noise`` (0 clean, 1
        pure noise) of the way along the process: ``(s, level)``, the input being ``s * x0`` at
        ``level``. None: this process has no such input (the ``denoiser`` features of the value
        verifier, :mod:`cadence.policies.denoiser_features`, are then not available)."""
        return None

    # --- policy.json ---------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.name}
        for key, f in self.spec_fields.items():
            out[key] = f.value if isinstance(f, Const) else f.dump(getattr(self, f.attr or key))
        return out

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str = "policy.json"):
        """The process a checked policy.json entry describes; errors name the key."""
        required = set(cls.spec_fields) | {"type"}
        if not isinstance(spec, Mapping):
            raise ProcessSpecError(f"{where}: 'process' must be an object, got {type(spec).__name__}")
        missing, unknown = sorted(required - set(spec)), sorted(set(spec) - required)
        if missing:
            raise ProcessSpecError(f"{where}: missing key 'process.{missing[0]}'")
        if unknown:
            raise ProcessSpecError(f"{where}: unknown key 'process.{unknown[0]}' (expected {sorted(required)})")
        values = {}
        try:
            for key, f in cls.spec_fields.items():
                checked = f.check(where, f"process.{key}", spec[key])
                if not isinstance(f, Const):
                    values[key] = checked
        except UntrustedFileError as exc:
            raise ProcessSpecError(str(exc)) from None
        try:
            return cls.from_spec_values(values)
        except (ValueError, TypeError) as exc:
            raise ProcessSpecError(f"{where}: 'process': {exc}") from None

    @classmethod
    def from_spec_values(cls, values: dict[str, Any]):
        """Construct from the checked fields (default: they are the constructor's keyword arguments)."""
        return cls(**values)


REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` available as ``policy.process=<cls.name>``."""
    missing = [m for m in REQUIRED if not hasattr(cls, m)]
    if missing:
        raise TypeError(f"process {cls.__name__} lacks {missing} (see cadence.policies.processes.base)")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"process name {cls.name!r} is taken by {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls


def _import_plugins() -> None:
    """Modules the user named with ``cadence --plugin`` (recorded in CADENCE_PLUGINS for worker
    processes): imported here so their processes register before a lookup."""
    for module in filter(None, os.environ.get("CADENCE_PLUGINS", "").split(",")):
        importlib.import_module(module)


def process_class(name: str) -> type:
    from . import builtin  # noqa: F401  (registers the processes cadence ships)
    if name not in REGISTRY:
        _import_plugins()
    if name not in REGISTRY:
        raise UnknownProcessError(f"policy.process must be one of {sorted(REGISTRY)}, got {name!r} (a process of "
                                  "your own: `cadence --plugin MODULE ...` imports the module that registers it)")
    return REGISTRY[name]


def process_names() -> list[str]:
    from . import builtin  # noqa: F401
    return sorted(REGISTRY)

