"""Truncated anchor diffusion (DiffusionDrive, Liao et al. 2025) for action chunks.

Anchors: ``K`` prototype chunks per task (k-means on the training set's normalised chunks,
:meth:`TruncatedAnchorProcess.fit_anchors`), kept in the ``anchors`` buffer (T, K, Tp, Da) so
they are saved with the weights. The forward process is the DDPM cosine schedule over
``train_steps`` timesteps, truncated: training draws ``t ~ U{0 .. trunc_steps - 1}`` and
noises *every anchor* to ``t`` (``sqrt(a_t) anchor + sqrt(1 - a_t) eps``, clipped to [-1, 1]).
The decoder (:class:`~cadence.policies.networks.anchor_decoder.AnchorDecoder`) refines all
anchors at once into clean chunks with a confidence logit each. Loss, summed over decoder
layers: ``cls_weight * focal(logits, onehot(k*)) + reg_weight * L1(chunk_{k*}, demo)``, where
``k*`` is the anchor nearest the demonstrated chunk (mean over time of the per-step Euclidean
distance) -- the label is the nearest *anchor*, not the nearest noisy sample.

Sampling is self-consistent (unlike the reference, whose model sees t=10 while its sample was
noised to t=8, and whose DDIM steps from 10 to 9 then jump to 0): the anchors are noised to
``start_step`` and the ``S`` steps visit ``t_i = start_step * (S - i) // S``; the model always
sees the timestep its input was noised to, and each step moves to the next timestep with a
deterministic DDIM update from the predicted chunk. The last step's predicted chunk is the
answer (DDIM's final step to a = 1). The mode returned is the most confident one
(``select="argmax"``) or one drawn from ``softmax(logits / temperature)`` (``select="sample"``).

``noise`` for :meth:`sample` is (B, Tp, Da) -- shared by all anchors, as every runtime passes
it -- or (B, K, Tp, Da); zero noise starts from the scaled anchors themselves and is
deterministic. ``task`` (B,) long picks each sample's anchor set (multitask suites).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cadence.errors import CadenceError
from cadence.untrusted import LIMITS, UntrustedFileError

from .base import POSITIVE, Choice, Const, Field, Int, Number, ProcessBase, register
from .ddim import ddim_step
from .ddpm import cosine_alphas_cumprod
from .focal_loss import sigmoid_focal_loss
from .kmeans import kmeans
from .known_actions import KnownActions

SELECT = ("argmax", "sample")


class AnchorError(CadenceError, RuntimeError):
    """The anchors are missing (not fitted) or do not match the data."""


def nearest_anchor(x0: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``x0`` (B, Tp, Da), ``anchors`` (B, K, Tp, Da) -> (B,) index of the anchor with the
    smallest mean over time of the per-step Euclidean distance."""
    return (x0[:, None] - anchors).norm(dim=-1).mean(dim=-1).argmin(dim=1)


def sampling_timesteps(start_step: int, steps: int) -> list[int]:
    """``t_i = start_step * (steps - i) // steps`` for i < steps: distinct, from start_step down."""
    if not 1 <= steps <= start_step + 1:
        raise ValueError(f"need 1 <= sample_steps <= start_step + 1 ({start_step + 1}), got {steps}")
    return [start_step * (steps - i) // steps for i in range(steps)]


class AnchorsField(Field):
    """``anchors``: (tasks, K, Tp, Da) nested lists of finite numbers, sizes checked before a tensor is made."""

    def check(self, where, name, value):
        bounds = (("tasks", LIMITS["tasks"]), ("K", LIMITS["anchors"]), ("Tp", LIMITS["horizon"]),
                  ("Da", LIMITS["action_dim"]))
        level = value
        for axis, bound in bounds:
            if not isinstance(level, list) or not 1 <= len(level) <= bound:
                raise UntrustedFileError(f"{where}: '{name}' must be nested lists (tasks, K, Tp, Da) with 1 to "
                                         f"{bound:,} entries along {axis}")
            level = level[0]
        try:
            anchors = torch.tensor(value, dtype=torch.float32)
        except (TypeError, ValueError):
            raise UntrustedFileError(f"{where}: '{name}' must be a regular (tasks, K, Tp, Da) array of numbers") from None
        if anchors.ndim != 4 or not torch.isfinite(anchors).all():
            raise UntrustedFileError(f"{where}: '{name}' must be a finite (tasks, K, Tp, Da) array, got shape "
                                     f"{tuple(anchors.shape)}")
        return anchors

    def dump(self, value):
        return value.detach().cpu().tolist()


@register
class TruncatedAnchorProcess(ProcessBase, nn.Module):
    name = "anchor"
    budget_steps = (4, 2, 1)
    uses_task = True          # the policy passes task= (B,) from the task_id observation
    graph_outputs = ("out", "logits")       # every mode's chunk and its confidence
    network = "anchor_decoder"              # refines every anchor at once and scores it
    fits_data = True                        # k-means anchors on the training chunks
    spec_fields = {"schedule": Const("cosine"), "train_steps": Int("diffusion_steps"),
                   "trunc_steps": Int("diffusion_steps"), "start_step": Int("diffusion_steps", low=0),
                   "sample_steps": Int("sample_steps"), "select": Choice(*SELECT), "temperature": Number(POSITIVE),
                   "anchors": AnchorsField()}

    def __init__(self, pred_horizon: int, action_dim: int, num_anchors: int = 20, num_tasks: int = 1,
                 train_steps: int = 1000, trunc_steps: int = 50, start_step: int | None = None,
                 sample_steps: int = 2, select: str = "argmax", temperature: float = 1.0,
                 cls_weight: float = 10.0, reg_weight: float = 8.0, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, kmeans_iters: int = 100):
        super().__init__()
        if not 1 <= trunc_steps <= train_steps:
            raise ValueError(f"need 1 <= trunc_steps <= train_steps, got {trunc_steps} and {train_steps}")
        start_step = trunc_steps - 1 if start_step is None else start_step
        if not 0 <= start_step < trunc_steps:
            raise ValueError(f"start_step must be in [0, trunc_steps={trunc_steps}), got {start_step}: the model is "
                             "only trained on timesteps below trunc_steps")
        if select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}, got {select!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if num_anchors < 1 or num_tasks < 1:
            raise ValueError(f"need num_anchors >= 1 and num_tasks >= 1, got {num_anchors} and {num_tasks}")
        self.train_steps, self.trunc_steps, self.start_step = train_steps, trunc_steps, start_step
        sampling_timesteps(start_step, sample_steps)          # validates sample_steps
        self.sample_steps = sample_steps
        self.select, self.temperature = select, temperature
        self.cls_weight, self.reg_weight = cls_weight, reg_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.kmeans_iters = kmeans_iters
        self.alphas_cumprod = cosine_alphas_cumprod(train_steps)
        self.register_buffer("anchors", torch.zeros(num_tasks, num_anchors, pred_horizon, action_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_config(cls, cfg, action_dim: int = 0, num_tasks: int = 1):
        a = cfg.anchor
        return cls(cfg.pred_horizon, action_dim, a.num_anchors, num_tasks, a.train_steps, a.trunc_steps, a.start_step,
                   cfg.sample_steps, a.select, a.temperature, a.cls_weight, a.reg_weight, a.focal_alpha,
                   a.focal_gamma, a.kmeans_iters)

    @classmethod
    def from_spec_values(cls, values):
        anchors = values.pop("anchors")
        process = cls(anchors.shape[2], anchors.shape[3], anchors.shape[1], anchors.shape[0], **values)
        process.anchors.copy_(anchors)
        process.fitted.fill_(True)
        return process

    def check_steps(self, steps: int) -> None:
        super().check_steps(steps)
        sampling_timesteps(self.start_step, steps)       # at most start_step + 1 distinct timesteps

    def reference_steps(self) -> int:
        # one step is the most accurate measured (PushT: later steps refine inputs the decoder never
        # trained on), so it is the reference the budget's action error is taken against
        return 1

    def level_range(self) -> float:
        return float(self.train_steps)

    def check_policy(self, obs_horizon: int, pred_horizon: int, action_dim: int) -> None:
        if tuple(self.anchors.shape[2:]) != (pred_horizon, action_dim):
            raise ValueError(f"'process.anchors' are {tuple(self.anchors.shape)} chunks; pred_horizon {pred_horizon} "
                             f"and action_dim {action_dim} need (T, K, {pred_horizon}, {action_dim})")

    def graph_chunk(self, pred_horizon: int, action_dim: int) -> tuple[int, ...]:
        return (self.num_anchors, pred_horizon, action_dim)

    @property
    def num_anchors(self) -> int:
        return self.anchors.shape[1]

    def timesteps(self) -> list[int]:
        return sampling_timesteps(self.start_step, self.sample_steps)

    def levels(self) -> list[float]:
        """The timestep the network sees at each sampling step."""
        return [float(t) for t in self.timesteps()]

    def noise_std(self, t: int) -> float:
        """Standard deviation of the noise added at timestep ``t`` (normalised units)."""
        return math.sqrt(1 - float(self.alphas_cumprod[t]))

    # --- anchors --------------------------------------------------------------------------------

    def fit_data(self, chunks_per_task: list[torch.Tensor], seed: int) -> str:
        self.fit_anchors(chunks_per_task, seed, self.kmeans_iters)
        return f"fitted {self.num_anchors} anchors per task on " + " + ".join(str(len(c)) for c in chunks_per_task)

    @torch.no_grad()
    def fit_anchors(self, chunks_per_task: list[torch.Tensor], seed: int = 0, iters: int = 100) -> None:
        """K-means on each task's normalised chunks (N, Tp, Da); fills the ``anchors`` buffer."""
        t, k, tp, da = self.anchors.shape
        if len(chunks_per_task) != t:
            raise AnchorError(f"{len(chunks_per_task)} sets of chunks for {t} anchor sets (tasks)")
        for i, chunks in enumerate(chunks_per_task):
            if tuple(chunks.shape[1:]) != (tp, da):
                raise AnchorError(f"task {i}: chunks have shape {tuple(chunks.shape[1:])}, anchors ({tp}, {da})")
            if chunks.shape[0] < k:
                raise AnchorError(f"task {i}: {chunks.shape[0]} training chunks, fewer than num_anchors={k}")
            gen = torch.Generator().manual_seed(seed + i)
            centres, _ = kmeans(chunks.reshape(chunks.shape[0], -1).float().cpu(), k, iters, gen)
            self.anchors[i] = centres.view(k, tp, da).to(self.anchors)
        self.fitted.fill_(True)

    def task_anchors(self, batch: int, task: torch.Tensor | None, device) -> torch.Tensor:
        """(B, K, Tp, Da): each sample's task's anchors."""
        if not bool(self.fitted):
            raise AnchorError("the anchors were never fitted (TruncatedAnchorProcess.fit_anchors; `cadence train` "
                              "fits them from the training data)")
        if task is None:
            if self.anchors.shape[0] != 1:
                raise AnchorError(f"{self.anchors.shape[0]} anchor sets (a multitask policy) need the task_id "
                                  "observation")
            return self.anchors[0].to(device).expand(batch, -1, -1, -1)
        return self.anchors.to(device)[task.to(device)]

    # --- training -------------------------------------------------------------------------------

    def noised(self, anchors: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(anchors.device)[t].to(anchors.dtype).view(-1, 1, 1, 1)
        return (a.sqrt() * anchors + (1 - a).sqrt() * noise).clamp(-1.0, 1.0)

    def loss(self, net, x0: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
             task: torch.Tensor | None = None) -> torch.Tensor:
        b = x0.shape[0]
        anchors = self.task_anchors(b, task, x0.device)
        t = torch.randint(0, self.trunc_steps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(anchors.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.noised(anchors, t, noise)
        label = nearest_anchor(x0, anchors)
        target = F.one_hot(label, anchors.shape[1]).to(x0.dtype)
        outputs = net.layer_outputs(x_t, t.to(x0.dtype), cond) if hasattr(net, "layer_outputs") \
            else [net(x_t, t.to(x0.dtype), cond)]
        total = x0.new_zeros(())
        rows = torch.arange(b, device=x0.device)
        for chunks, logits in outputs:
            total = total + self.cls_weight * sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma) \
                + self.reg_weight * F.l1_loss(chunks[rows, label], x0)
        return total

    # --- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_modes(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None, known: KnownActions | None = None,
                      task: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every mode's chunk (B, K, Tp, Da) and confidence logit (B, K) after the last step."""
        b = shape[0]
        anchors = self.task_anchors(b, task, cond.device)
        eps = self._start_noise(anchors, generator, noise)
        steps = self.timesteps()
        alphas = self.alphas_cumprod.tolist()
        x = self.noised(anchors, torch.full((b,), steps[0], device=cond.device), eps)
        if known is not None:
            x = _impose(known, x, eps, math.sqrt(alphas[steps[0]]), math.sqrt(1 - alphas[steps[0]]))
        for i, t in enumerate(steps):
            chunks, logits = net(x, torch.full((b,), float(t), device=x.device), cond, step=i)
            if i + 1 == len(steps):
                break
            a_next = alphas[steps[i + 1]]
            x = ddim_step(x, alphas[t], a_next, x0=chunks).clamp(-1.0, 1.0)
            if known is not None:
                x = _impose(known, x, eps, math.sqrt(a_next), math.sqrt(1 - a_next))
        if known is not None:
            chunks = _impose(known, chunks, eps, 1.0, 0.0)
        return chunks, logits

    @torch.no_grad()
    def sample(self, net, cond: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, known: KnownActions | None = None,
               task: torch.Tensor | None = None) -> torch.Tensor:
        chunks, logits = self.predict_modes(net, cond, shape, generator, noise, known, task)
        return chunks[torch.arange(shape[0], device=chunks.device), self.choose(logits, generator)]

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, K) confidence logits -> (B,) the mode to execute."""
        if self.select == "argmax":
            return logits.argmax(dim=1)
        probs = torch.softmax(logits.float() / self.temperature, dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def _start_noise(self, anchors: torch.Tensor, generator, noise) -> torch.Tensor:
        if noise is None:
            return torch.randn(anchors.shape, generator=generator, device=anchors.device, dtype=anchors.dtype)
        noise = noise.to(anchors)
        if noise.ndim == 3:
            noise = noise[:, None]
        if noise.ndim != 4 or noise.shape[0] != anchors.shape[0] or noise.shape[2:] != anchors.shape[2:] \
                or noise.shape[1] not in (1, anchors.shape[1]):
            b, k, tp, da = anchors.shape
            raise ValueError(f"noise must be (B={b}, Tp={tp}, Da={da}) or (B, K={k}, Tp, Da), got {tuple(noise.shape)}")
        return noise.expand_as(anchors)


def _impose(known: KnownActions, x: torch.Tensor, noise: torch.Tensor, signal: float, scale: float) -> torch.Tensor:
    """Known entries (values (B, Tp, Da)) imposed on every mode of ``x`` (B, K, Tp, Da)."""
    m = known.mask.to(x.device).view(1, 1, -1, 1)
    return torch.where(m, signal * known.values.to(x)[:, None] + scale * noise, x)
