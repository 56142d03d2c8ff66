"""Inference-time search over start noises: K candidate chunks, one kept by a verifier.

After "Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps" (Ma et al.,
2025): the start noise is the search variable. ``best_of`` samples K chunks in one batched call
sequence (the observation is encoded once, its conditioning repeated K times) and keeps the one
the verifier scores highest. ``zero_order`` then runs ``rounds`` more rounds around the best
noise (the pivot): K - 1 neighbours ``(pivot + radius * e) / sqrt(1 + radius^2)`` (unit variance
again), scored together with the pivot's own chunk, the best becoming the next pivot; since
every round scores the pivot beside its neighbours, the result is never worse by the verifier
than where the search started.

``trust`` < 1 keeps a learned verifier near the policy's own modes: it picks only among that
fraction of the candidates closest to the others (the top of ``consensus``), so a candidate the
verifier overrates far from what the policy usually does cannot be kept (a trust region; the
argmax of a verifier over many candidates otherwise finds where it is wrong).

A verifier scores (chunks (B, K, Tp, Da) in task units, :class:`SearchContext`) -> (B, K), higher
better. Built in, needing no training:

- ``consensus``: minus the candidate's mean distance to the other K - 1 (the medoid scores
  highest): the mode most candidates agree on.
- ``coherence``: minus the distance to ``previous``, the actions the last chunk planned for the
  same times (what the control loop's blend keeps continuous); without ``previous`` every
  candidate scores 0 and the first one (the plain policy's sample) is kept.

- ``confidence`` (anchor policies): the candidate's own mode logit. An anchor policy's
  candidates are every mode (anchor) of every start noise, so search covers anchors and noise.

And ``oracle``, not deployable (a robot has no copy of the world; it measures the headroom):
each candidate's actions from ``start`` to the chunk's end run in a copy of the simulator from
the current state, scored by the task (:mod:`cadence.envs.lookahead`: success, failure, else
progress). It needs ``context.lookahead``, which a simulated rollout gives. With
``lookahead_chunks`` = M > 0 it looks further: each candidate's first actions (those the rollout
runs of a chunk), then M chunks of the policy's own sampling (the candidates of one observation
continued from the same start noises, so that they differ by the candidate, not by the
continuation's luck), scored where the last leaves the episode.

Candidates of a stateful process (streaming: a rolling buffer per batch row) cannot be drawn
side by side; search refuses it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import torch


METHODS = ("best_of", "zero_order")


@dataclass(frozen=True)
class SearchContext:
    """What a verifier may look at: the observation (each key (B, To, ...)), the index of the
    action due now in the chunk, the previous chunk's plan from there on (B, P, Da) or None, in a
    simulated rollout ``lookahead``: plans (B, K, T, Da) -> scores (B, K) from copies of the
    simulator, ``cond``: the policy's conditioning of the observation (B, C), computed once, and
    for an anchor policy ``confidence``: each candidate's mode logit (B, K); for an oracle that looks
    further, ``lookahead_chunks`` and ``continue_with`` (:func:`continuation`), passed to ``lookahead``."""
    obs: Mapping[str, torch.Tensor]
    start: int
    previous: torch.Tensor | None = None
    lookahead: Callable[[np.ndarray], np.ndarray] | None = None
    cond: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    lookahead_chunks: int = 0
    continue_with: Callable | None = None


Verifier = Callable[[torch.Tensor, SearchContext], torch.Tensor]


def _rms(diff: torch.Tensor) -> torch.Tensor:
    """Root mean square over the last two dimensions (time, action)."""
    return diff.pow(2).mean(dim=(-2, -1)).sqrt()


def consensus(chunks: torch.Tensor, context: SearchContext) -> torch.Tensor:
    k = chunks.shape[1]
    if k == 1:
        return chunks.new_zeros(chunks.shape[:2])
    distances = _rms(chunks[:, :, None] - chunks[:, None])         # (B, K, K), zero diagonal
    return -distances.sum(dim=2) / (k - 1)


def coherence(chunks: torch.Tensor, context: SearchContext) -> torch.Tensor:
    if context.previous is None:
        return chunks.new_zeros(chunks.shape[:2])
    previous = context.previous.to(chunks)
    p = min(previous.shape[1], chunks.shape[2] - context.start)
    return -_rms(chunks[:, :, context.start: context.start + p] - previous[:, None, :p])


def oracle(chunks: torch.Tensor, context: SearchContext) -> torch.Tensor:
    if context.lookahead is None:
        raise ValueError("search.verifier=oracle runs each candidate in a copy of the simulator, so it works in a "
                         "simulated rollout (cadence eval) only, never on a robot")
    plans = chunks[:, :, context.start:].detach().to("cpu", torch.float32).numpy()
    more = {"continue_with": context.continue_with, "chunks": context.lookahead_chunks} if context.lookahead_chunks else {}
    scores = np.asarray(context.lookahead(plans, **more), dtype=np.float64)
    if scores.shape != chunks.shape[:2]:
        raise ValueError(f"lookahead returned scores of shape {scores.shape}, expected {tuple(chunks.shape[:2])}")
    return torch.as_tensor(scores, dtype=chunks.dtype, device=chunks.device)


def confidence(chunks: torch.Tensor, context: SearchContext) -> torch.Tensor:
    if context.confidence is None:
        raise ValueError("search.verifier=confidence ranks by an anchor policy's own mode logits; this policy's "
                         "process has none (use an anchor policy, or another verifier)")
    return context.confidence.to(chunks)


def continuation(policy, generator: torch.Generator | None = None) -> Callable:
    """``follow(obs, group)``: the policy's own chunk (no search) after each candidate of a lookahead
    (observations (N, To, ...)); rows of one ``group`` (the same observation's candidates) start from
    the same noise, rows of different groups from independent ones."""
    def follow(obs: Mapping[str, torch.Tensor], group: np.ndarray):
        shape = (int(group.max()) + 1, policy.pred_horizon, policy.action_dim)
        noise = torch.randn(shape, generator=generator)[torch.as_tensor(group)]
        return policy.sample_chunk(obs, noise=noise.to(next(iter(obs.values())).device))
    return follow


def zero_lookahead(plans: np.ndarray, **_) -> np.ndarray:
    """A lookahead that scores every plan 0: times a search's network share without a simulator."""
    return np.zeros(plans.shape[:2])


VERIFIERS: dict[str, Verifier] = {"consensus": consensus, "coherence": coherence, "oracle": oracle,
                                  "confidence": confidence}
LOOKAHEAD_VERIFIERS = ("oracle",)


@dataclass(frozen=True)
class SearchSettings:
    candidates: int = 1                 # K: 1 is the policy without search
    method: str = "best_of"             # best_of | zero_order
    verifier: str | Verifier = "consensus"
    rounds: int = 2                     # zero_order: rounds after the first
    radius: float = 0.5                 # zero_order: neighbour noise scale around the pivot
    trust: float = 1.0                  # the verifier picks among this fraction of the candidates, the ones
                                        # closest to the others (consensus); 1: among all of them
    lookahead_chunks: int = 0           # oracle: the policy's own chunks run after each candidate before scoring

    def __post_init__(self):
        if self.candidates < 1:
            raise ValueError(f"search.candidates must be >= 1, got {self.candidates}")
        if self.method not in METHODS:
            raise ValueError(f"search.method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.verifier, str) and self.verifier not in VERIFIERS:
            raise ValueError(f"search.verifier must be one of {sorted(VERIFIERS)}, got {self.verifier!r}")
        if self.rounds < 0 or not self.radius > 0:
            raise ValueError(f"search.rounds must be >= 0 and search.radius > 0, got {self.rounds}, {self.radius}")
        if not 0 < self.trust <= 1:
            raise ValueError(f"search.trust must be a fraction in (0, 1], got {self.trust}")
        if self.lookahead_chunks < 0 or (self.lookahead_chunks and self.verifier not in LOOKAHEAD_VERIFIERS):
            raise ValueError(f"search.lookahead_chunks must be >= 0, and > 0 only with the oracle verifier (it runs "
                             f"the policy after each candidate in a copy of the simulator), got {self.lookahead_chunks} "
                             f"with {self.verifier!r}")

    @property
    def uses_lookahead(self) -> bool:
        """Whether the verifier scores candidates in copies of the simulator (needs ``lookahead``)."""
        return self.candidates > 1 and isinstance(self.verifier, str) and self.verifier in LOOKAHEAD_VERIFIERS

    @property
    def uses_previous(self) -> bool:
        """Whether the verifier compares candidates with the last chunk's plan (needs ``previous``)."""
        return self.candidates > 1 and self.verifier == "coherence"

    @property
    def score(self) -> Verifier:
        return VERIFIERS[self.verifier] if isinstance(self.verifier, str) else self.verifier

    def trusted_score(self, chunks: torch.Tensor, context: SearchContext, pivot: bool = False) -> torch.Tensor:
        """The verifier's scores with every candidate outside the trust region at -inf: the region is
        the ``trust`` fraction of them closest to the others (the consensus' top), plus candidate 0
        when it is a zero-order round's ``pivot``, so a round never ends worse than its start."""
        scores = self.score(chunks, context)
        k = chunks.shape[1]
        kept = math.ceil(self.trust * k)
        if kept >= k:
            return scores
        agreement = consensus(chunks, context)
        outside = agreement < agreement.topk(kept, dim=1).values[:, -1:]
        if pivot:
            outside[:, 0] = False
        return scores.masked_fill(outside, float("-inf"))


def _pick(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, K, ...) at index (B,) -> (B, ...)."""
    return values[torch.arange(values.shape[0], device=values.device), index]


class CandidateSampler:
    """Samples chunks for (B, K) start noises of one observation batch, encoding it once. An
    anchor policy's process denoises every mode (anchor) of each noise at once: its candidates
    are all M modes of all K noises (noise k's are k*M .. k*M + M - 1), with their confidence
    logits in ``confidence`` after each call (None for processes without modes, M = 1)."""

    def __init__(self, policy, obs: Mapping[str, torch.Tensor], prefix: torch.Tensor | None):
        self.policy = policy
        self.cond = policy.encoder(obs, policy.normalizer)
        self.batch = self.cond.shape[0]
        shape = (self.batch, policy.pred_horizon, policy.action_dim)
        self.known = None if prefix is None else policy.known_actions(prefix, shape, self.cond.device)
        self.task = policy.task_kwargs(obs)
        self.with_modes = callable(getattr(policy.process, "predict_modes", None))
        self.modes = policy.process.num_anchors if self.with_modes else 1
        self.confidence: torch.Tensor | None = None

    def __call__(self, noises: torch.Tensor) -> torch.Tensor:
        """noises (B, K, Tp, Da) -> chunks (B, K * M, Tp, Da) in task units, in one batched call sequence."""
        b, k = noises.shape[:2]
        repeat = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731 - candidate rows follow their sample's
        known = None if self.known is None else type(self.known)(repeat(self.known.values), self.known.mask)
        task = {key: repeat(value) if isinstance(value, torch.Tensor) else value for key, value in self.task.items()}
        self.policy.prepare_sampling()
        process, args = self.policy.process, (self.policy.denoiser, repeat(self.cond), (b * k, *noises.shape[2:]))
        flat = noises.reshape(b * k, *noises.shape[2:])
        if self.with_modes:
            x, logits = process.predict_modes(*args, noise=flat, known=known, **task)
            self.confidence = logits.reshape(b, k * self.modes)
        else:
            x = process.sample(*args, noise=flat, known=known, **task)
        x = self.policy.normalizer.unnormalize(self.policy.action_key, x)
        return x.reshape(b, k * self.modes, *noises.shape[2:])


def search_chunk(policy, obs: Mapping[str, torch.Tensor], settings: SearchSettings,
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                 prefix: torch.Tensor | None = None, previous: torch.Tensor | None = None,
                 lookahead: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
    """The kept chunk (B, Tp, Da), task units. ``noise`` (B, Tp, Da), if given, is candidate 0's
    start noise; the others are drawn from ``generator``. ``previous`` and ``lookahead``: see
    :class:`SearchContext`."""
    if policy.process.keeps_state:
        raise ValueError(f"search: the {policy.process.name} process keeps state per batch row; its candidates "
                         "cannot be sampled side by side")
    sample = CandidateSampler(policy, obs, prefix)
    k, m, device = settings.candidates, sample.modes, sample.cond.device
    shape = (sample.batch, k, policy.pred_horizon, policy.action_dim)
    noises = torch.randn(shape, generator=generator, device=device)
    if noise is not None:
        noises[:, 0] = noise.to(device)
    follow = continuation(policy, generator) if settings.lookahead_chunks else None
    context = SearchContext(obs, policy.obs_horizon - 1, previous, lookahead, sample.cond,
                            lookahead_chunks=settings.lookahead_chunks, continue_with=follow)
    chunks = sample(noises)
    noises, logits = noises.repeat_interleave(m, dim=1), sample.confidence     # one row per candidate
    best = settings.trusted_score(chunks, replace(context, confidence=logits)).argmax(dim=1)
    pivot = [_pick(t, best) if t is not None else None for t in (noises, chunks, logits)]
    if settings.method == "zero_order" and k > 1:
        scale = 1.0 / math.sqrt(1.0 + settings.radius ** 2)
        for _ in range(settings.rounds):
            step = torch.randn((sample.batch, k - 1, *shape[2:]), generator=generator, device=device)
            neighbours = (pivot[0][:, None] + settings.radius * step) * scale
            fresh = (neighbours.repeat_interleave(m, dim=1), sample(neighbours), sample.confidence)
            noises, chunks, logits = (None if p is None else torch.cat([p[:, None], f], dim=1)
                                          for p, f in zip(pivot, fresh))
            best = settings.trusted_score(chunks, replace(context, confidence=logits), pivot=True).argmax(dim=1)
            # ties keep the pivot
            pivot = [_pick(t, best) if t is not None else None for t in (noises, chunks, logits)]
    return pivot[1]
