"""The ``value`` search verifier: a small network that ranks a policy's candidate chunks.

``ChunkValue`` scores (the policy's observation conditioning, a candidate's actions from ``start``
to the chunk's end) with an MLP, on what the policy's own denoiser computes on the candidate
(:mod:`cadence.policies.denoiser_features`, a frozen copy of its UNet) or on the conditioning and
the actions themselves. It is trained by ``cadence verifier train``
(:mod:`cadence.verifier_train`) on the policy's own candidates in simulation, on training seeds
only, to order the candidates of one observation as the simulator's lookahead ordered them
(:mod:`cadence.envs.lookahead`): only the chunk-dependent part of a value decides which
candidate to keep, and candidates of the same observation compared with each other carry it
without the noise of the episode's other chance events. Deployable: it needs nothing but the
observation and the candidates.

Saved as ``model.safetensors`` + ``verifier.json`` (sizes, the input, the action range it scales
by, the seeds it was trained on); loading checks both, bounds the network's size before building
it, and never unpickles.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from cadence.errors import CadenceError
from cadence.policies.denoiser_features import DenoiserFeatures
from cadence.untrusted import (LIMITS, UntrustedFileError, check_int, check_number, load_safetensors, read_json,
                              safetensors_header)

FORMAT = "cadence-chunk-value-1"
MAX_MEMBERS = 64                # networks in an ensemble


class VerifierError(CadenceError, ValueError):
    """A value verifier that cannot be trained or used as asked (e.g. on evaluation seeds)."""


class MeanOfHeads(nn.Module):
    """An ensemble: the mean of its ``heads``' outputs (each fitted from its own start and batches)."""

    def __init__(self, heads: list[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(x) for head in self.heads]).mean(dim=0)


class ChunkValue(nn.Module):
    """(cond (B, C), plans (B, K, P, Da) in task units) -> scores (B, K), higher better, by an MLP on
    one of two inputs. ``features=None`` ("plan"): the conditioning beside the candidate's actions
    scaled to [-1, 1] (``centered``: also each candidate minus the mean of the K, what sets it apart
    from the others). A :class:`DenoiserFeatures`: what the policy's own denoiser computes on the
    candidate (``dropout`` before each hidden layer). ``members`` > 1: that many MLPs on the same
    input, their scores averaged (an ensemble: a candidate one of them overrates by chance is less
    likely to top the mean)."""

    def __init__(self, cond_dim: int, plan_steps: int, action_dim: int, hidden: int,
                 action_low: list[float], action_high: list[float], centered: bool = False,
                 features: DenoiserFeatures | None = None, dropout: float = 0.0, members: int = 1):
        super().__init__()
        self.cond_dim, self.plan_steps, self.action_dim, self.hidden = cond_dim, plan_steps, action_dim, hidden
        self.centered, self.features, self.dropout, self.members = centered, features, dropout, members
        self.register_buffer("action_low", torch.tensor(action_low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(action_high, dtype=torch.float32), persistent=False)

        def mlp() -> nn.Sequential:
            if features is None:
                width = cond_dim + plan_steps * action_dim * (2 if centered else 1)
                return nn.Sequential(nn.Linear(width, hidden), nn.Mish(),
                                     nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, 1))
            return nn.Sequential(nn.Dropout(dropout), nn.Linear(features.width, hidden), nn.Mish(),
                                 nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, 1))
        self.net = mlp() if members == 1 else MeanOfHeads([mlp() for _ in range(members)])

    @property
    def heads(self) -> list[nn.Module]:
        """Its MLPs (one unless an ensemble)."""
        return list(self.net.heads) if isinstance(self.net, MeanOfHeads) else [self.net]

    def inputs(self, cond: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        """What the MLP reads of each candidate: (B, K, width)."""
        if self.features is not None:
            return self.features(cond, plans)
        b, k = plans.shape[:2]
        scaled = (2 * (plans - self.action_low) / (self.action_high - self.action_low).clamp_min(1e-6) - 1).flatten(2)
        parts = [cond.flatten(1)[:, None].expand(b, k, -1), scaled]
        if self.centered:
            parts.append(scaled - scaled.mean(dim=1, keepdim=True))
        return torch.cat(parts, dim=-1)

    def forward(self, cond: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        return self.net(self.inputs(cond, plans)).squeeze(-1)

    def spec(self) -> dict:
        """Its sizes as ``verifier.json`` records them."""
        out = {"cond_dim": self.cond_dim, "plan_steps": self.plan_steps, "action_dim": self.action_dim,
               "hidden": self.hidden, "centered": self.centered, "action_low": self.action_low.tolist(),
               "action_high": self.action_high.tolist(), "features": "plan" if self.features is None else "denoiser",
               "members": self.members}
        if self.features is not None:
            f = self.features
            out.update(unet={k: v for k, v in f.unet.spec.items() if k not in ("action_dim", "cond_dim")},
                       pred_horizon=f.pred_horizon, noise_points=f.points, dropout=self.dropout)
        return out


class ValueVerifier:
    """The search verifier around a :class:`ChunkValue`: reads the conditioning the search has
    already computed (``context.cond``) and the candidates from ``context.start``."""

    name = "value"

    def __init__(self, model: ChunkValue, info: dict, folder: str | Path | None = None):
        self.model, self.info, self.folder = model.eval(), info, folder

    @property
    def train_seeds(self) -> list[range]:
        """The seeds its candidates were collected on (one range per collection it was fitted on)."""
        return [range(first, first + count) for first, count in seed_ranges(self.info["train_seeds"])]

    def check_unseen(self, seeds: range) -> None:
        """Refuse evaluation ``seeds`` that the verifier was trained on."""
        for seen in self.train_seeds:
            if seeds.start < seen.stop and seen.start < seeds.stop:
                raise VerifierError(f"the value verifier was trained on seeds {seen.start}..{seen.stop - 1}, which "
                                    f"overlap the evaluation seeds {seeds.start}..{seeds.stop - 1}; evaluate on other seeds")

    def check_fits(self, policy) -> None:
        """Refuse a verifier whose sizes are not ``policy``'s (plan steps, action size, conditioning
        size where the policy states it), before anything runs."""
        plan_steps = policy.pred_horizon - (policy.obs_horizon - 1)
        cond_dim = getattr(policy.encoder, "out_dim", None)
        self._check_sizes(plan_steps, policy.action_dim, cond_dim)

    def _check_sizes(self, plan_steps: int, action_dim: int, cond_dim: int | None) -> None:
        where = self.folder or "the value verifier"
        if (plan_steps, action_dim) != (self.model.plan_steps, self.model.action_dim):
            raise VerifierError(f"{where}: trained on plans of {self.model.plan_steps} x {self.model.action_dim} "
                                f"actions ('plan_steps', 'action_dim'), the policy's are {plan_steps} x {action_dim}")
        if cond_dim is not None and cond_dim != self.model.cond_dim:
            raise VerifierError(f"{where}: 'cond_dim' is {self.model.cond_dim}, the policy's conditioning has {cond_dim}")

    @torch.no_grad()
    def __call__(self, chunks: torch.Tensor, context) -> torch.Tensor:
        if context.cond is None:
            raise ValueError("the value verifier scores from the policy's conditioning; this search gave none")
        plans = chunks[:, :, context.start:]
        self._check_sizes(plans.shape[2], plans.shape[3], context.cond.shape[-1])
        scores = self.score(context.cond.to(chunks), plans).to(chunks.dtype)
        return scores.nan_to_num(nan=-math.inf)      # a candidate it cannot score is never preferred

    def score(self, cond: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
        """cond (B, C), plans (B, K, P, Da) -> (B, K), on the tensors' device."""
        return self.model.to(plans.device)(cond, plans)


def seed_ranges(value) -> list[list[int]]:
    """``train_seeds`` as written: ``[first, count]`` (one collection) or a list of them."""
    return [value] if value and not isinstance(value[0], list) else value


def save_value(model: ChunkValue, info: dict, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    spec = {"format": FORMAT, **model.spec(), **_finite(info)}
    (folder / "verifier.json").write_text(json.dumps(spec, indent=2, allow_nan=False))
    return folder


MAX_VALUE = 1e6     # |any weight or statistic in a verifier file|: float32 arithmetic on them stays finite
MIN_STD = 1e-6      # the least feature scale a verifier file may divide by


def _finite(value):
    """``value`` with every float that is not finite (a metric of an empty set, say) as None: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def load_value(folder: str | Path) -> ValueVerifier:
    """A saved value verifier, every field checked; raises :class:`UntrustedFileError` naming the file."""
    folder = Path(folder)
    where = folder / "verifier.json"
    if not where.is_file():
        raise UntrustedFileError(f"{where}: no value verifier here (train one with `cadence verifier train "
                                 "checkpoint=...`)")
    spec = read_json(where)
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise UntrustedFileError(f"{where}: not a cadence value verifier (format must be {FORMAT!r})")
    sizes = {name: check_int(where, name, spec.get(name), 1, LIMITS[limit])
             for name, limit in (("cond_dim", "width"), ("plan_steps", "horizon"), ("action_dim", "action_dim"),
                                 ("hidden", "width"))}
    bounds = []
    for name in ("action_low", "action_high"):
        values = spec.get(name)
        if not isinstance(values, list) or len(values) != sizes["action_dim"]:
            raise UntrustedFileError(f"{where}: '{name}' must be a list of {sizes['action_dim']} numbers")
        bounds.append([check_number(where, f"{name}[{i}]", v, -1e6, 1e6) for i, v in enumerate(values)])
    if any(low > high for low, high in zip(*bounds)):
        raise UntrustedFileError(f"{where}: 'action_low' is above 'action_high' for some action")
    centered = spec.get("centered", False)          # verifiers written before the option were not centered
    if not isinstance(centered, bool):
        raise UntrustedFileError(f"{where}: 'centered' must be true or false")
    seeds = spec.get("train_seeds")
    if not isinstance(seeds, list) or not seeds:
        raise UntrustedFileError(f"{where}: 'train_seeds' must be [first, count] or a list of them")
    ranges = seed_ranges(seeds)
    if len(ranges) > LIMITS["episodes"] or not all(isinstance(r, list) and len(r) == 2 for r in ranges):
        raise UntrustedFileError(f"{where}: 'train_seeds' must be [first, count] or a list of them")
    for first, count in ranges:
        check_int(where, "train_seeds first", first, 0, 2 ** 63)
        check_int(where, "train_seeds count", count, 1, LIMITS["episodes"])
    trunk, dropout = read_features(where, spec, sizes)
    members = check_int(where, "members", spec.get("members", 1), 1, MAX_MEMBERS)   # verifiers before ensembles: 1

    def build() -> ChunkValue:
        features = DenoiserFeatures(**trunk) if trunk else None
        return ChunkValue(**sizes, action_low=bounds[0], action_high=bounds[1], centered=centered,
                          features=features, dropout=dropout, members=members)

    with torch.device("meta"):              # sizes first, nothing allocated
        try:
            skeleton = build()
        except (ValueError, RuntimeError) as exc:
            raise UntrustedFileError(f"{where}: its sizes build no network: {exc}") from None
    count = sum(t.numel() for t in skeleton.state_dict().values())
    if count > LIMITS["parameters"]:
        raise UntrustedFileError(f"{where}: the sizes build {count:,} parameters, more than {LIMITS['parameters']:,}")
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: shape for k, (_, shape) in safetensors_header(folder / "model.safetensors").items()}
    if expected != got:                     # the header alone, before the network is built
        differ = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise UntrustedFileError(f"{folder / 'model.safetensors'}: tensors do not match the sizes in verifier.json "
                                 f"({len(differ)} differ, e.g. {', '.join(f'{k} {got.get(k)} not {expected.get(k)}' for k in differ[:3])})")
    model = build()
    tensors = load_safetensors(folder / "model.safetensors")
    wrong = sorted(k for k, v in model.state_dict().items() if tensors[k].dtype != v.dtype)
    if wrong:
        raise UntrustedFileError(f"{folder / 'model.safetensors'}: tensor {wrong[0]!r} is {tensors[wrong[0]].dtype}, "
                                 f"not {model.state_dict()[wrong[0]].dtype}")
    large = sorted(k for k, v in tensors.items() if v.is_floating_point() and bool((v.abs() > MAX_VALUE).any()))
    if large:
        raise UntrustedFileError(f"{folder / 'model.safetensors'}: tensor {large[0]!r} has values beyond +-{MAX_VALUE:g}")
    model.load_state_dict(tensors)
    if model.features is not None and not bool((model.features.std >= MIN_STD).all()):
        raise UntrustedFileError(f"{folder / 'model.safetensors'}: 'features.std' has entries below {MIN_STD:g}")
    return ValueVerifier(model, spec, folder)


def read_features(where: Path, spec: dict, sizes: dict) -> tuple[dict | None, float]:
    """``verifier.json``'s input: (the :class:`DenoiserFeatures` arguments or None for "plan", dropout)."""
    kind = spec.get("features", "plan")         # verifiers written before the option read plans
    if kind == "plan":
        return None, 0.0
    if kind != "denoiser":
        raise UntrustedFileError(f"{where}: 'features' must be 'plan' or 'denoiser', got {kind!r}"[:300])
    unet = spec.get("unet")
    if not isinstance(unet, dict) or set(unet) != {"down_dims", "kernel_size", "n_groups", "level_embed_dim"}:
        raise UntrustedFileError(f"{where}: 'unet' must hold down_dims, kernel_size, n_groups and level_embed_dim")
    dims = unet["down_dims"]
    if not isinstance(dims, list) or not 1 <= len(dims) <= 8:
        raise UntrustedFileError(f"{where}: 'unet.down_dims' must be a list of 1 to 8 widths")
    down_dims = [check_int(where, "unet.down_dims[]", d, 1, LIMITS["width"]) for d in dims]
    horizon = check_int(where, "pred_horizon", spec.get("pred_horizon"), sizes["plan_steps"], LIMITS["horizon"])
    if horizon % 2 ** (len(down_dims) - 1):
        raise UntrustedFileError(f"{where}: 'pred_horizon' {horizon} is not divisible by the UNet's "
                                 f"{2 ** (len(down_dims) - 1)}")
    trunk = {"unet": {"action_dim": sizes["action_dim"], "cond_dim": sizes["cond_dim"], "down_dims": down_dims,
                      "kernel_size": check_int(where, "unet.kernel_size", unet["kernel_size"], 1, 255),
                      "n_groups": check_int(where, "unet.n_groups", unet["n_groups"], 1, LIMITS["width"]),
                      "level_embed_dim": check_int(where, "unet.level_embed_dim", unet["level_embed_dim"], 2,
                                                   LIMITS["width"])},
             "pred_horizon": horizon, "points": check_int(where, "noise_points", spec.get("noise_points"), 1, 64)}
    return trunk, check_number(where, "dropout", spec.get("dropout"), 0.0, 0.99)


def resolve_verifier(name: str, value: str | Path | None, checkpoint_dir: Path | None, eval_seeds: range | None = None):
    """A search verifier by name; ``value`` loads the trained one from ``value`` (default: the run's
    ``verifier/`` beside ``checkpoint_dir``), refused if it was trained on any of ``eval_seeds``."""
    if name != "value":
        return name
    if value is None and checkpoint_dir is None:
        raise VerifierError("the value verifier needs its folder (search.value=... from `cadence verifier train`)")
    verifier = load_value(value or Path(checkpoint_dir).parent / "verifier")
    if eval_seeds is not None:
        verifier.check_unseen(eval_seeds)
    return verifier
