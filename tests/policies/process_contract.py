"""The contract every registered process keeps, as checks that take a process name.

``test_process_contract.py`` runs them over cadence's processes; ``docs/extending.md``'s toy
process runs them too, and a deliberately incomplete process must fail them by name. Each check
builds a tiny policy (an MLP denoiser, or the network a process requires) so that the ONNX
export stays a few seconds (a U-Net for processes with a level per action).
"""
from __future__ import annotations

import numpy as np
import torch
from cadence.datasets.normalizer import Normalizer
from cadence.deploy.budget import candidate_steps, reference_steps
from cadence.deploy.exported_policy import load_exported
from cadence.deploy.onnx_export import export_policy_onnx
from cadence.policies.factory import build_policy
from cadence.policies.processes.base import REGISTRY, REQUIRED, ProcessBase
from cadence.policies.processes.known_actions import KnownActions
from omegaconf import OmegaConf

from cadence.config import PolicyConfig

TP, TO, DA, B = 16, 2, 2, 3
STATS = {"state": {"min": np.full(6, -2.0), "max": np.full(6, 2.0)},
         "action": {"min": np.array([-1.5, -1.0]), "max": np.array([1.5, 1.5])}}


def check_members(cls) -> None:
    """The members cadence looks up, present and of the right kind."""
    missing = [m for m in REQUIRED if not hasattr(cls, m)]
    assert not missing, f"process {cls.__name__} lacks {missing}"
    assert issubclass(cls, ProcessBase), f"process {cls.__name__} does not derive from ProcessBase"
    assert REGISTRY.get(cls.name) is cls, f"process {cls.__name__} is not registered as {cls.name!r}"
    assert cls.budget_steps and all(isinstance(s, int) and s >= 1 for s in cls.budget_steps), \
        f"{cls.__name__}.budget_steps must be positive ints, got {cls.budget_steps!r}"
    assert cls.finetune_method in (None, "reinflow", "dppo"), \
        f"{cls.__name__}.finetune_method must be None, 'reinflow' or 'dppo', got {cls.finetune_method!r}"
    assert cls.finetune_method != "reinflow" or callable(getattr(cls, "velocity", None)), \
        f"{cls.__name__} declares finetune_method='reinflow' without a velocity(net, x, t, cond, steps, step)"


def make_policy(name: str, seed: int = 0, **overrides):
    cls = REGISTRY[name]
    cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig),
                          {"process": name, "network": cls.network or ("unet" if cls.level_per_action else "mlp"),
                           "down_dims": [16], "level_embed_dim": 16,
                           "obs_feature_dim": 16, "pred_horizon": TP, "obs_horizon": TO, "exec_horizon": 8,
                           "mlp": {"width": 32, "n_layers": 2},
                           "anchor": {"num_anchors": 4, "d_model": 16, "n_heads": 2, "cond_tokens": 2,
                                      "ffn_mult": 2}, **overrides})
    cfg.sample_steps = min(s for s in cls.budget_steps if s > 1) if max(cls.budget_steps) > 1 else 1
    torch.manual_seed(seed)
    norm = Normalizer.from_stats(STATS, {"state": "limits", "action": "limits"})
    policy = build_policy(cfg, {"state": (6,)}, DA, norm).eval()
    if policy.process.fits_data:
        policy.process.fit_data([torch.rand(40, TP, DA, generator=torch.Generator().manual_seed(seed)) * 2 - 1], seed)
    return policy


def _inputs(policy, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(B, policy.encoder.out_dim, generator=gen)     # the process appends its own extra conditioning
    return cond, torch.randn(B, TP, DA, generator=gen), gen


def check_loss(name: str) -> None:
    policy = make_policy(name).train()
    cond, x0, gen = _inputs(policy)
    loss = policy.process.loss(policy.denoiser, x0.clamp(-1, 1), cond, gen)
    assert loss.ndim == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
    loss.backward()
    grads = [p.grad for p in policy.denoiser.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name}: the loss does not reach the denoiser"


def check_sample(name: str) -> None:
    policy = make_policy(name)
    cond, noise, gen = _inputs(policy)
    x = policy.process.sample(policy.denoiser, cond, (B, TP, DA), generator=gen, noise=noise)
    assert tuple(x.shape) == (B, TP, DA) and torch.isfinite(x).all(), f"{name}: sample {tuple(x.shape)}"
    policy.process.reset()
    again = policy.process.sample(policy.denoiser, cond, (B, TP, DA), noise=noise)
    assert torch.equal(x, again), f"{name}: the same noise after reset() gives another chunk"


def check_prefix(name: str) -> None:
    policy = make_policy(name)
    cond, noise, gen = _inputs(policy)
    values = torch.rand(B, TP, DA, generator=gen) * 2 - 1
    mask = torch.zeros(TP, dtype=torch.bool)
    mask[TO - 1: TO + 3] = True
    x = policy.process.sample(policy.denoiser, cond, (B, TP, DA), noise=noise, known=KnownActions(values, mask))
    err = (x[:, mask] - values[:, mask]).abs().max().item()
    assert err < 1e-5, f"{name}: the known prefix comes back {err:.2e} away"
    if policy.process.loop_graph:       # its loop graph always takes known entries: none known must be no prefix
        policy.process.reset()
        none = policy.process.sample(policy.denoiser, cond, (B, TP, DA), noise=noise,
                                     known=KnownActions(values, torch.zeros(TP, dtype=torch.bool)))
        policy.process.reset()
        plain = policy.process.sample(policy.denoiser, cond, (B, TP, DA), noise=noise)
        assert torch.equal(none, plain), f"{name}: an empty known mask changes the chunk (loop_graph)"


def check_steps(name: str) -> None:
    process = make_policy(name).process
    for steps in candidate_steps(process, None):
        copy = process.with_steps(steps)
        assert copy.sample_steps == steps and copy is not process, f"{name}: with_steps({steps})"
        assert len(copy.levels()) == steps, f"{name}: {steps} steps but levels() has {len(copy.levels())}"
    for bad in (0, -1, True, 2.0):
        try:
            process.with_steps(bad)
        except ValueError:
            continue
        raise AssertionError(f"{name}: with_steps({bad!r}) was accepted")
    assert process.allows_steps(reference_steps(process, None)), f"{name}: its reference setting is not allowed"


def check_spec(name: str) -> None:
    policy = make_policy(name)
    process = policy.process
    spec = process.spec()
    assert spec["type"] == name, f"{name}: spec type {spec['type']!r}"
    rebuilt = type(process).from_spec(spec)
    assert rebuilt.spec() == spec, f"{name}: spec() -> from_spec() -> spec() differs"
    cond, noise, _ = _inputs(policy)
    a = process.sample(policy.denoiser, cond, (B, TP, DA), noise=noise, generator=torch.Generator().manual_seed(3))
    b = rebuilt.sample(policy.denoiser, cond, (B, TP, DA), noise=noise, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b), f"{name}: the rebuilt process samples another chunk"


def check_onnx(name: str, out_dir) -> None:
    policy = make_policy(name)
    export_policy_onnx(policy, out_dir, obs_shapes={"state": (6,)}, echo=None)
    exported = load_exported(out_dir, provider="cpu")
    obs = {"state": torch.rand(B, TO, 6, generator=torch.Generator().manual_seed(4)) * 4 - 2}
    noise = torch.randn(B, TP, DA, generator=torch.Generator().manual_seed(5))
    mine = policy.predict_chunk(obs, noise=noise, generator=torch.Generator().manual_seed(6)).actions
    theirs = exported.predict_chunk(obs, noise=noise, generator=torch.Generator().manual_seed(6)).actions
    err = (mine - theirs).abs().max().item()
    assert err < 1e-4, f"{name}: ONNX Runtime's chunk is {err:.2e} from PyTorch's"


def check_budget(name: str) -> None:
    process = make_policy(name).process
    steps = candidate_steps(process, None)
    assert steps and steps == sorted(set(steps), reverse=True), f"{name}: budget candidates {steps}"
    assert process.sample_steps in steps, f"{name}: its own setting {process.sample_steps} is not a candidate"
    assert all(process.allows_steps(s) for s in steps), f"{name}: a candidate it cannot sample with"


CHECKS = {"loss": check_loss, "sample": check_sample, "prefix": check_prefix, "steps": check_steps,
          "spec": check_spec, "budget": check_budget}
