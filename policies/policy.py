"""Policy = normalizer + observation encoder + denoiser + process.

Batches and observations are in the task's units; the policy normalises inside.
``compute_loss(batch)`` trains; ``predict_chunk(obs)`` returns an :class:`ActionChunk` whose
actions at ``start = To - 1`` onwards are the ones to execute (receding horizon: execute
``Ta`` of them, observe, predict again).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from cadence.errors import CadenceError
from cadence.policies.action_chunk import ActionChunk
from cadence.datasets.normalizer import Normalizer
from cadence.datasets.window_dataset import TASK_ID_KEY

from .obs_encoder import ObsEncoder
from .processes import KnownActions


class NonFiniteActions(CadenceError, RuntimeError):
    """A chunk with NaN or infinite actions: never handed to a robot or a simulator."""


class Policy(nn.Module):
    def __init__(self, normalizer: Normalizer, encoder: ObsEncoder, denoiser: nn.Module, process,
                 obs_horizon: int, pred_horizon: int, action_dim: int, action_key: str = "action"):
        super().__init__()
        self.normalizer = normalizer
        self.encoder = encoder
        self.denoiser = denoiser
        self.process = process
        self.obs_horizon, self.pred_horizon, self.action_dim = obs_horizon, pred_horizon, action_dim
        self.action_key = action_key
        self.search = None          # SearchSettings: inference-time search over start noises (policies/search.py)

    def compute_loss(self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """``batch``: the observation keys (B, To, ...) and ``action_key`` (B, Tp, Da)."""
        actions = self.normalizer.normalize(self.action_key, batch[self.action_key].float())
        loss = self.process.loss(self.denoiser, actions, self.encoder(batch, self.normalizer, generator), generator,
                                 **self.task_kwargs(batch))
        aux = getattr(self.denoiser, "aux_loss", None)      # e.g. MoDE's load balancing
        return loss + aux() if aux is not None else loss

    @torch.no_grad()
    def predict_chunk(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                      noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                      previous: torch.Tensor | None = None, lookahead=None) -> ActionChunk:
        """``obs``: each observation key (B, To, ...). ``noise`` (B, Tp, Da) fixes the start sample.
        ``prefix`` (B, P, Da), task units: actions already committed from chunk index ``start`` on;
        the chunk reproduces them and continues from them (inpainting). With ``search``
        (:class:`~cadence.policies.search.SearchSettings`, K > 1) K candidates are sampled and a
        verifier keeps one; ``previous`` (B, P, Da): the last chunk's plan from ``start`` on, for
        the coherence verifier; ``lookahead``: a simulated rollout's scorer, for the oracle
        verifier (see :class:`~cadence.policies.search.SearchContext`)."""
        if self.search is not None and self.search.candidates > 1:
            from .search import search_chunk
            chunk = ActionChunk(search_chunk(self, obs, self.search, generator, noise, prefix, previous, lookahead),
                                start=self.obs_horizon - 1)
        else:
            chunk = self.sample_chunk(obs, generator, noise, prefix)
        if not bool(torch.isfinite(chunk.actions).all()):
            raise NonFiniteActions("the policy's actions are not finite (NaN or infinite): its weights or "
                                   "normaliser send them out of float32's range")
        return chunk

    @torch.no_grad()
    def sample_chunk(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                     noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> ActionChunk:
        """One chunk sampled without search (what ``predict_chunk`` does when ``search`` is off)."""
        cond = self.encoder(obs, self.normalizer)
        shape = (cond.shape[0], self.pred_horizon, self.action_dim)
        known = None if prefix is None else self.known_actions(prefix, shape, cond.device)
        self.prepare_sampling()
        x = self.process.sample(self.denoiser, cond, shape, generator=generator, noise=noise, known=known,
                                **self.task_kwargs(obs))
        return ActionChunk(self.normalizer.unnormalize(self.action_key, x), start=self.obs_horizon - 1)

    @property
    def uses_lookahead(self) -> bool:
        """Whether ``predict_chunk`` wants ``lookahead`` (search with the oracle verifier)."""
        return self.search is not None and self.search.uses_lookahead

    @property
    def uses_previous(self) -> bool:
        """Whether ``predict_chunk`` wants ``previous``, the last chunk's plan (search with the coherence verifier)."""
        return self.search is not None and self.search.uses_previous

    def prepare_sampling(self) -> None:
        """Let a denoiser with step-indexed caches (MoDE's fused experts) build them for the
        process's current schedule; cheap when nothing changed."""
        prepare = getattr(self.denoiser, "prepare_sampling", None)
        if prepare is not None:
            prepare(self.process.levels())

    def task_kwargs(self, obs: Mapping[str, torch.Tensor]) -> dict:
        """``task=`` (B,) for processes with per-task state (anchors), from the one-hot task_id."""
        if not self.process.uses_task:
            return {}
        ids = obs.get(TASK_ID_KEY)
        return {"task": None if ids is None else ids[:, -1].argmax(dim=-1)}

    def known_actions(self, prefix: torch.Tensor, shape: tuple[int, int, int], device) -> KnownActions:
        """The committed ``prefix`` (B, P, Da, task units) as known entries of a chunk of ``shape``, from ``start`` on."""
        start = self.obs_horizon - 1
        if prefix.ndim != 3 or prefix.shape[0] != shape[0] or prefix.shape[2] != shape[2] \
                or not 0 < prefix.shape[1] <= shape[1] - start:
            raise ValueError(f"prefix must be (B={shape[0]}, 1..{shape[1] - start}, Da={shape[2]}), "
                             f"got {tuple(prefix.shape)}")
        values = torch.zeros(shape, device=device)
        values[:, start: start + prefix.shape[1]] = self.normalizer.normalize(self.action_key, prefix.to(device).float())
        mask = torch.zeros(shape[1], dtype=torch.bool, device=device)
        mask[start: start + prefix.shape[1]] = True
        return KnownActions(values, mask)

    def reset(self) -> None:
        """Clear per-episode state (a streaming process's buffer)."""
        self.process.reset()

    def keep_rows(self, rows) -> None:
        """Keep the per-episode state of these rows of the last batch only (rollouts drop finished episodes)."""
        self.process.keep_rows(rows)

    def weights(self) -> dict[str, torch.Tensor]:
        """Trainable weights, without the normalizer (saved in its own file)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("normalizer.")}
