"""``cadence verifier train checkpoint=RUN``: fit the ``value`` search verifier of a trained policy.

1. Roll the policy out in simulation on *training* seeds (``seed`` .. ``seed + episodes +
   val_episodes - 1``; refused if they reach ``eval_seed``, where evaluations start). At every
   prediction K candidates are sampled from random start noises (the observation encoded once),
   each candidate's actions from now to the chunk's end are scored in a copy of the simulator
   (the oracle's lookahead: success, failure, else progress), and the policy's own first sample
   is executed, so the states are the ones the plain policy visits. With ``continue_chunks`` = M
   > 0 the label looks further: the candidate's first ``exec_horizon`` actions (those the
   controller runs of it) and then M chunks of the policy itself (the candidates of one
   observation continued from the same start noises), scored where the last leaves the episode.
2. Fit :class:`~cadence.policies.value_verifier.ChunkValue` to order each observation's
   candidates as their scores do (pairwise logistic loss over the candidates of one observation,
   each pair weighted by its score gap up to 1; ties ignored), on the first ``episodes`` seeds; the last ``val_episodes`` are held out.
   Its input (``features``): the policy's denoiser run on each candidate (``denoiser``, the default
   where the policy has a UNet and a process with a clean input) or the conditioning and the
   actions (``plan``); computed once for every candidate, then the MLP alone is trained
   (``members`` = N: an ensemble of N, scored by their mean).
3. Write ``<run>/verifier/`` (``model.safetensors``, ``verifier.json`` with the seeds and the
   held-out numbers, ``candidates.safetensors``: what was collected, so that ``refit=true`` fits
   again without rolling out): pairwise accuracy, how often its pick is the lookahead's best, and the
   lookahead score its pick gives up against the best (regret) beside a random pick's.

``merge=[DIR, ...]`` fits on other collections too (each folder's ``candidates.safetensors``, its
held-out part included): collected from the same policy (its weights' fingerprint), with the same
K and ``continue_chunks``, on seeds that overlap no other collection's; ``verifier.json`` then
lists every collection's seeds.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from cadence.envs.rollout import rollout
from cadence.envs.task_env import make_env
from cadence.envs.worker_memory import check_worker_memory
from cadence.policies.action_chunk import ActionChunk
from cadence.policies.search import CandidateSampler, continuation
from cadence.policies.denoiser_features import DenoiserFeatures
from cadence.policies.value_verifier import MAX_MEMBERS, ChunkValue, VerifierError, save_value

log = logging.getLogger(__name__)


@dataclass
class Candidates:
    cond: torch.Tensor      # (N, C): the policy's conditioning of each observation
    plans: torch.Tensor     # (N, K, P, Da): candidates from start, task units
    scores: torch.Tensor    # (N, K): their lookahead scores

    @classmethod
    def concat(cls, parts: list["Candidates"]) -> "Candidates":
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("cond", "plans", "scores")))

    def rows(self, start: int, stop: int) -> "Candidates":
        return Candidates(self.cond[start:stop], self.plans[start:stop], self.scores[start:stop])


class CandidateRecorder:
    """Takes the policy's place in a rollout: K candidates per observation (K x modes for an anchor
    policy), each scored by the rollout's lookahead; records them and executes the policy's own
    sample of the first noise."""

    uses_lookahead = True

    def __init__(self, policy, candidates: int, generator: torch.Generator, continue_chunks: int = 0):
        self.policy, self.k, self.generator = policy, candidates, generator
        self.continue_chunks = continue_chunks
        # continuations draw from their own stream: the candidates and the executed samples stay those of continue_chunks=0
        self.follow = continuation(policy, torch.Generator().manual_seed(generator.initial_seed() + 2 ** 32))
        self.parts: list[Candidates] = []

    def reset(self) -> None:
        self.policy.reset()

    def predict_chunk(self, obs, lookahead) -> ActionChunk:
        sample = CandidateSampler(self.policy, obs, None)
        shape = (sample.batch, self.k, self.policy.pred_horizon, self.policy.action_dim)
        chunks = sample(torch.randn(shape, generator=self.generator).to(sample.cond.device))
        start = self.policy.obs_horizon - 1
        plans = chunks[:, :, start:].detach().to("cpu", torch.float32)
        more = {"continue_with": self.follow, "chunks": self.continue_chunks} if self.continue_chunks else {}
        scores = torch.as_tensor(np.asarray(lookahead(plans.numpy(), **more)), dtype=torch.float32)
        self.parts.append(Candidates(sample.cond.detach().cpu().float(), plans, scores))
        own = torch.zeros(sample.batch, dtype=torch.long, device=chunks.device)   # noise 0's sample, as the policy picks it
        if sample.confidence is not None:
            own = self.policy.process.choose(sample.confidence[:, :sample.modes])
        return ActionChunk(chunks[torch.arange(sample.batch, device=chunks.device), own], start)


def collect(policy, train_cfg, seeds: list[int], candidates: int, batch_envs: int, async_envs: bool,
            seed: int, progress: bool, continue_chunks: int = 0) -> tuple[Candidates, float]:
    """The candidates of every prediction on ``seeds``, and the episodes' success rate."""
    p = train_cfg.policy
    recorder = CandidateRecorder(policy, candidates, torch.Generator().manual_seed(seed), continue_chunks)
    successes = []
    waves = [seeds[i: i + batch_envs] for i in range(0, len(seeds), batch_envs)]
    for wave in tqdm(waves, desc="verifier rollouts", unit="wave", disable=not progress):
        result = rollout(recorder, lambda: make_env(train_cfg.task), wave, p.obs_horizon, p.exec_horizon,
                         list(train_cfg.task.obs_keys), device=next(policy.parameters()).device, progress=False,
                         async_envs=async_envs)
        successes.extend(result.success.tolist())
    return Candidates.concat(recorder.parts), float(np.mean(successes))


def pairwise_loss(values: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """softplus(-(v_i - v_j)) over the pairs of one observation's candidates with s_i > s_j, each
    weighted by min(s_i - s_j, 1): a success against a miss counts fully, a hundredth of progress
    a hundredth (equal weights teach the network the many tiny progress differences and not the
    few that decide an episode)."""
    gap = scores[:, :, None] - scores[:, None, :]
    weight = torch.where(gap > 1e-6, gap.clamp(max=1.0), torch.zeros_like(gap))
    if not bool(weight.any()):
        return values.sum() * 0.0
    loss = F.softplus(-(values[:, :, None] - values[:, None, :]))
    return (loss * weight).sum() / weight.sum()


@torch.no_grad()
def in_batches(fn, data: Candidates, device="cpu", desc: str | None = None, progress: bool = False,
               rows: int = 64) -> torch.Tensor:
    """``fn(cond, plans)`` over ``data`` a few observations at a time on ``device``; the result on the CPU."""
    out = [fn(data.cond[i:i + rows].to(device), data.plans[i:i + rows].to(device)).cpu()
           for i in tqdm(range(0, len(data.cond), rows), desc=desc, unit="batch", disable=not progress or desc is None)]
    return torch.cat(out)


@torch.no_grad()
def ranking_metrics(model: ChunkValue, data: Candidates) -> dict:
    """Held-out numbers of ``model`` on ``data`` (:func:`ranking_numbers`)."""
    return ranking_numbers(in_batches(model.eval(), data), data.scores)


def ranking_numbers(values: torch.Tensor, scores: torch.Tensor) -> dict:
    """Pairwise accuracy of ``values`` (N, K) against ``scores`` (strict pairs), top-1 agreement with
    the lookahead's best (observations whose candidates are not all tied) and regret of the pick
    against the best, beside a uniformly random pick's."""
    better = scores[:, :, None] > scores[:, None, :] + 1e-6
    right = (values[:, :, None] > values[:, None, :]) & better
    pick = values.argmax(dim=1)
    best = scores.max(dim=1).values
    picked = scores[torch.arange(len(scores)), pick]
    varied = (scores.max(dim=1).values - scores.min(dim=1).values) > 1e-6
    return {"pairs": int(better.sum()), "pairwise_accuracy": float(right.sum() / better.sum().clamp_min(1)),
            "top1_agreement": float((picked[varied] >= best[varied] - 1e-6).float().mean()) if varied.any() else None,
            "regret": float((best - picked).mean()), "random_pick_regret": float((best - scores.mean(dim=1)).mean()),
            "observations": len(scores)}


def fit(train: Candidates, hidden: int, steps: int, batch_size: int, lr: float, seed: int,
        action_low: list[float], action_high: list[float], progress: bool, centered: bool = False,
        features: DenoiserFeatures | None = None, dropout: float = 0.0, weight_decay: float = 1e-4,
        members: int = 1, raw: torch.Tensor | None = None) -> ChunkValue:
    """A :class:`ChunkValue` fitted to ``train``. Its input is computed once for every candidate
    (``features``: the policy's denoiser run on each, standardized over them; ``raw``: those
    features of ``train`` already computed, left as they are), then the MLPs alone are trained,
    each of the ``members`` from its own start and on its own batches."""
    torch.manual_seed(seed)
    n, _, p, da = train.plans.shape
    model = ChunkValue(train.cond.shape[1], p, da, hidden, action_low, action_high, centered, features, dropout, members)
    if features is not None:
        x = raw if raw is not None else in_batches(features.raw, train, features.mean.device, "denoiser features", progress)
        features.cpu()
        flat = x.flatten(0, 1)
        features.mean.copy_(flat.mean(dim=0))
        features.std.copy_(flat.std(dim=0) + 1e-5)
    else:
        x = in_batches(model.inputs, train)
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generators = [torch.Generator().manual_seed(seed + m) for m in range(members)]
    bar = tqdm(range(steps), desc="fit value verifier", disable=not progress)
    model.train()
    for _ in bar:
        loss = 0.0
        for head, generator in zip(model.heads, generators):   # independent fits: the gradients do not mix
            idx = torch.randint(n, (min(batch_size, n),), generator=generator)
            loss = loss + pairwise_loss(head(standardized(model, x[idx])).squeeze(-1), train.scores[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item() / members:.4f}")
    return model.eval()


def standardized(model: ChunkValue, x: torch.Tensor) -> torch.Tensor:
    """The MLP's input from what :func:`fit` holds: raw denoiser features standardized, plan inputs as they are."""
    return x if model.features is None else (x - model.features.mean) / model.features.std


@torch.no_grad()
def values_from(model: ChunkValue, x: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """``model``'s scores of candidates whose input (raw denoiser features, (N, K, width)) is computed."""
    return torch.cat([model.net(standardized(model, x[i:i + rows])).squeeze(-1) for i in range(0, len(x), rows)])


def cross_validate(train: Candidates, folds: int, fit_fold, progress: bool) -> dict:
    """``train`` in ``folds`` contiguous folds in collection order (the observations of a wave of
    episodes are recorded together, so a fold larger than a wave holds whole waves but at its two
    edges); ``fit_fold(a, b)`` scores rows a..b by a verifier fitted on the other rows; the numbers
    over every observation so scored."""
    n = len(train.scores)
    if not 2 <= folds <= n:
        raise VerifierError(f"cv_folds must be 0 (none) or 2..{n} (the training observations), got {folds}")
    edges = [round(i * n / folds) for i in range(folds + 1)]
    values = [fit_fold(a, b) for a, b in tqdm(list(zip(edges, edges[1:])), desc="cross-validation", unit="fold",
                                              disable=not progress)]
    return {"folds": folds, **ranking_numbers(torch.cat(values), train.scores)}


CANDIDATES_FILE = "candidates.safetensors"


def save_candidates(out: Path, train: Candidates, val: Candidates | None, success: float, cfg: DictConfig,
                    policy: str) -> None:
    """The collected candidates beside the verifier, so ``refit=true`` fits again without rolling out."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"{part}.{field}": getattr(data, field).contiguous() for part, data in (("train", train), ("val", val))
               if data is not None for field in ("cond", "plans", "scores")}
    save_file(tensors, str(out / CANDIDATES_FILE), metadata={
        "seed": str(cfg.seed), "episodes": str(cfg.episodes), "val_episodes": str(cfg.val_episodes),
        "candidates": str(cfg.candidates), "continue_chunks": str(cfg.continue_chunks), "success": str(success),
        "policy": policy})


MAX_SCORE = 1e6         # |a collected candidate's score| (a discounted return or success)


def read_collection(path: Path) -> tuple[Candidates, Candidates | None, dict]:
    """A ``candidates.safetensors``: its training and held-out parts and its metadata."""
    from safetensors import safe_open

    from cadence.untrusted import load_safetensors

    tensors = load_safetensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    parts = [Candidates(*(tensors.get(f"{part}.{f}") for f in ("cond", "plans", "scores"))) for part in ("train", "val")]
    if parts[0].cond is None:
        raise VerifierError(f"{path}: holds no training candidates")
    for name, part in zip(("train", "val"), parts):
        fields = (part.cond, part.plans, part.scores)
        if any(f is None for f in fields) and any(f is not None for f in fields) or part.cond is not None and (
                part.cond.ndim != 2 or part.plans.ndim != 4 or part.scores.shape != part.plans.shape[:2]
                or len(part.cond) != len(part.plans)):
            raise VerifierError(f"{path}: its {name} cond, plans and scores do not fit together")
    return parts[0], parts[1] if parts[1].cond is not None else None, meta


def check_collection(path: Path, train: Candidates, val: Candidates | None, sizes: tuple[int, int | None, int, int]):
    """Each part's tensors float32, of this fit's ``sizes`` (K candidates, conditioning C (None: not
    checked), plan steps P, action size Da), and scores within +-``MAX_SCORE``."""
    for name, part in (("train", train), ("val", val)):
        if part is None:
            continue
        fields = (part.cond, part.plans, part.scores)
        k, c, p, da = sizes
        if any(f.dtype != torch.float32 for f in fields):
            raise VerifierError(f"{path}: its {name} tensors must be float32")
        if part.plans.shape[1:] != (k, p, da) or c is not None and part.cond.shape[1] != c:
            raise VerifierError(f"{path}: its {name} part holds conditioning {tuple(part.cond.shape[1:])} and plans "
                                f"{tuple(part.plans.shape[1:])}, this fit needs ({c},) and {(k, p, da)}")
        if not bool((part.scores.abs() <= MAX_SCORE).all()):
            raise VerifierError(f"{path}: its {name} scores reach beyond +-{MAX_SCORE:g}")


def collection_sizes(cfg: DictConfig, policy) -> tuple[int, int | None, int, int]:
    """(K, C, P, Da) a collection for ``policy`` holds: see :func:`check_collection`."""
    return (int(cfg.candidates), getattr(policy.encoder, "out_dim", None),
            policy.pred_horizon - (policy.obs_horizon - 1), policy.action_dim)


def recorded_success(meta: dict) -> float | None:
    """The policy's success on the training seeds as a collection records it (None: not recorded)."""
    try:
        value = float(meta.get("success", "nan"))
    except ValueError:
        return None
    return value if 0 <= value <= 1 else None


def load_candidates(out: Path, cfg: DictConfig, n_train: int, n_val: int, policy: str,
                    sizes: tuple) -> tuple[Candidates, Candidates | None, float | None]:
    path = out / CANDIDATES_FILE
    if not path.is_file():
        raise VerifierError(f"{path}: no collected candidates to refit on (run without refit=true first)")
    train, val, meta = read_collection(path)
    wanted = {"seed": str(cfg.seed), "episodes": str(n_train), "val_episodes": str(n_val),
              "candidates": str(cfg.candidates), "continue_chunks": str(cfg.continue_chunks), "policy": policy}
    # collections written before continue_chunks (or the policy's fingerprint) was recorded: 0 (unknown)
    found = {k: meta.get(k, {"continue_chunks": "0", "policy": policy}.get(k)) for k in wanted}
    if found != wanted:
        raise VerifierError(f"{path}: collected with {found}, not {wanted}; collect again (refit=false)")
    check_collection(path, train, val, sizes)
    return train, val, recorded_success(meta)


def load_merged(folders, cfg: DictConfig, policy: str, own: list[int],
                sizes: tuple) -> tuple[list[Candidates], list[list[int]]]:
    """The collections in ``folders`` (training and held-out parts alike) and their seeds ``[first,
    count]``, each checked against this fit: the same policy, K and continue_chunks, the same sizes,
    seeds below ``eval_seed`` and overlapping no other collection's (``own``: this one's)."""
    parts, ranges = [], [own]
    for folder in folders:
        path = Path(folder) / CANDIDATES_FILE
        if not path.is_file():
            raise VerifierError(f"merge: {path} does not exist (a folder written by `cadence verifier train`)")
        train, val, meta = read_collection(path)
        wanted = {"candidates": str(cfg.candidates), "continue_chunks": str(cfg.continue_chunks), "policy": policy}
        found = {k: meta.get(k, "0" if k == "continue_chunks" else None) for k in wanted}
        if found != wanted:
            raise VerifierError(f"merge: {path} was collected with {found}, this fit needs {wanted}")
        check_collection(path, train, val, sizes)
        try:
            first = int(meta["seed"])
            seeds = [first, int(meta["episodes"]) + int(meta["val_episodes"])]
        except (KeyError, ValueError):
            raise VerifierError(f"merge: {path} does not record the seeds it was collected on") from None
        if first < 0 or min(int(meta["episodes"]), int(meta["val_episodes"])) < 0 or seeds[1] < 1:
            raise VerifierError(f"merge: {path} records seeds {meta['seed']!r}, episodes {meta['episodes']!r} and "
                                f"val_episodes {meta['val_episodes']!r}: not a seed range")
        if first + seeds[1] > int(cfg.eval_seed):
            raise VerifierError(f"merge: {path} was collected on seeds {first}..{first + seeds[1] - 1}, which reach "
                                f"the evaluation seeds (eval_seed={cfg.eval_seed})")
        for start, count in ranges:
            if first < start + count and start < first + seeds[1]:
                raise VerifierError(f"merge: {path} was collected on seeds {first}..{first + seeds[1] - 1}, which "
                                    f"overlap another collection's {start}..{start + count - 1}")
        ranges.append(seeds)
        parts.extend(p for p in (train, val) if p is not None)
    return parts, ranges


# what the MLP is fitted with on each input unless the command line says otherwise
FIT_DEFAULTS = {"plan": {"hidden": 256, "steps": 3000, "dropout": 0.0, "weight_decay": 1e-4, "members": 1},
                "denoiser": {"hidden": 64, "steps": 1500, "dropout": 0.3, "weight_decay": 0.1, "members": 1}}


def choose_features(cfg: DictConfig, policy) -> tuple[DenoiserFeatures | None, dict]:
    """The verifier's input (``features``: denoiser | plan | auto) and the fit's settings."""
    kind = str(cfg.features)
    if kind not in ("auto", "denoiser", "plan"):
        raise VerifierError(f"features must be auto, denoiser or plan, got {kind!r}")
    features = None
    if kind != "plan":
        noise = [float(v) for v in cfg.noise]
        if not noise or not all(0.0 <= v <= 1.0 for v in noise):
            raise VerifierError(f"noise must be fractions in [0, 1] (0 clean, 1 pure noise), got {list(cfg.noise)}")
        try:
            features = DenoiserFeatures.from_policy(policy, noise)
        except ValueError as exc:
            if kind == "denoiser":
                raise VerifierError(str(exc)) from None
            log.info("value verifier on plans: %s", exc)
    name = "plan" if features is None else "denoiser"
    fitting = {k: v if cfg[k] is None else type(v)(cfg[k]) for k, v in FIT_DEFAULTS[name].items()}
    if features is not None and cfg.centered:
        raise VerifierError("centered applies to features=plan; the denoiser features are not centered")
    if features is None and fitting["dropout"]:
        raise VerifierError(f"dropout applies to features=denoiser; this verifier reads plans (dropout={cfg.dropout})")
    if fitting["hidden"] < 1 or fitting["steps"] < 1 or not 0.0 <= fitting["dropout"] < 1.0 or fitting["weight_decay"] < 0 \
            or not 1 <= fitting["members"] <= MAX_MEMBERS:
        raise VerifierError(f"need hidden >= 1, steps >= 1, 0 <= dropout < 1, weight_decay >= 0 and 1 <= members <= "
                            f"{MAX_MEMBERS}, got {fitting}")
    return features, fitting


def check_seeds(cfg: DictConfig) -> tuple[list[int], list[int]]:
    first, n_train, n_val = int(cfg.seed), int(cfg.episodes), int(cfg.val_episodes)
    if first < 0 or n_train < 1 or n_val < 0:
        raise VerifierError(f"need seed >= 0, episodes >= 1 and val_episodes >= 0, got {first}, {n_train}, {n_val}")
    if first + n_train + n_val > int(cfg.eval_seed):
        raise VerifierError(f"training seeds {first}..{first + n_train + n_val - 1} reach the evaluation seeds, which "
                         f"start at eval_seed={cfg.eval_seed}: the value verifier is never trained on them")
    return list(range(first, first + n_train)), list(range(first + n_train, first + n_train + n_val))


def run(cfg: DictConfig, progress: bool = True) -> Path:
    from cadence.cache_file import weights_sha256
    from cadence.checkpoint import load_policy, resolve_checkpoint_dir
    from cadence.device import resolve_device

    train_seeds, val_seeds = check_seeds(cfg)
    if int(cfg.candidates) < 2:
        raise VerifierError(f"candidates must be >= 2 (a ranking needs two), got {cfg.candidates}")
    if int(cfg.continue_chunks) < 0:
        raise VerifierError(f"continue_chunks must be >= 0, got {cfg.continue_chunks}")
    if int(cfg.cv_folds) < 0 or int(cfg.cv_folds) == 1:
        raise VerifierError(f"cv_folds must be 0 (none) or >= 2, got {cfg.cv_folds}")
    if int(cfg.batch_envs) < 1:
        raise VerifierError(f"batch_envs must be >= 1, got {cfg.batch_envs}")
    device = resolve_device(cfg.device)
    ckpt = resolve_checkpoint_dir(cfg.checkpoint)
    policy, train_cfg, meta = load_policy(ckpt, device)
    if policy.process.keeps_state:
        raise VerifierError(f"the {policy.process.name} process keeps state per batch row; search (and its value "
                         "verifier) cannot use it")
    if train_cfg.task.env_id is None:
        raise VerifierError(f"{ckpt}: its task has no simulator; the value verifier is trained in simulation")
    features, fitting = choose_features(cfg, policy)
    if cfg.async_envs and not cfg.refit:
        check_worker_memory(train_cfg.task, min(int(cfg.batch_envs), len(train_seeds)),
                            f"batch_envs={cfg.batch_envs} with async_envs=true")
    out = Path(cfg.out_dir) if cfg.out_dir else ckpt.parent / "verifier"
    fingerprint = weights_sha256(ckpt)         # which policy a collection came from
    started = time.perf_counter()
    if cfg.refit:
        train, val, train_success = load_candidates(out, cfg, len(train_seeds), len(val_seeds), fingerprint,
                                                    collection_sizes(cfg, policy))
    else:
        with torch.no_grad():
            how = (int(cfg.candidates), int(cfg.batch_envs), bool(cfg.async_envs))
            train, train_success = collect(policy, train_cfg, train_seeds, *how, int(cfg.seed), progress,
                                           int(cfg.continue_chunks))
            val = collect(policy, train_cfg, val_seeds, *how, int(cfg.seed) + 1, progress,
                          int(cfg.continue_chunks))[0] if val_seeds else None
        save_candidates(out, train, val, train_success, cfg, fingerprint)
    seeds = [train_seeds[0], len(train_seeds) + len(val_seeds)]
    if cfg.merge:
        more, ranges = load_merged(list(cfg.merge), cfg, fingerprint, seeds, collection_sizes(cfg, policy))
        train, seeds = Candidates.concat([train, *more]), ranges
    collect_s = time.perf_counter() - started
    norm = policy.normalizer
    low, high = (norm.unnormalize(policy.action_key, torch.full((1, policy.action_dim), v)).flatten().tolist()
                 for v in (-1.0, 1.0))

    # the denoiser features of every candidate, once: each fit (cross-validation's too) standardizes its rows of them
    raw = in_batches(features.raw, train, device, "denoiser features", progress) if features is not None else None

    def fit_on(data: Candidates, x: torch.Tensor | None, show: bool) -> ChunkValue:   # a fresh copy of the features
        return fit(data, fitting["hidden"], fitting["steps"], int(cfg.batch_size), float(cfg.lr), int(cfg.seed),
                   low, high, show, bool(cfg.centered), copy.deepcopy(features), fitting["dropout"],
                   fitting["weight_decay"], fitting["members"], x)

    def fold(a: int, b: int) -> torch.Tensor:
        rest = Candidates.concat([train.rows(0, a), train.rows(b, len(train.scores))])
        if raw is None:
            return in_batches(fit_on(rest, None, False), train.rows(a, b))
        return values_from(fit_on(rest, torch.cat([raw[:a], raw[b:]]), False), raw[a:b])
    folds = int(cfg.cv_folds)
    cv = cross_validate(train, folds, fold, progress) if folds else None
    model = fit_on(train, raw, progress)
    train_values = in_batches(model, train) if raw is None else values_from(model, raw)
    info = {"train_seeds": seeds, "checkpoint_step": meta["step"],
            "candidates": int(cfg.candidates), "continue_chunks": int(cfg.continue_chunks), "episodes": len(train_seeds), "val_episodes": len(val_seeds),
            "observations": len(train.scores), "fit": fitting, "policy_success_on_training_seeds": train_success,
            "collect_seconds": round(collect_s, 1), "fit_seconds": round(time.perf_counter() - started - collect_s, 1),
            "train": ranking_numbers(train_values, train.scores), "held_out": ranking_metrics(model, val) if val is not None else None,
            "cross_validation": cv}
    save_value(model, info, out)
    held = info["held_out"] or info["train"]
    merged = f" and {len(cfg.merge)} merged collection(s)" if cfg.merge else ""
    print(f"value verifier ({model.spec()['features']} features): {len(train.scores)} observations x {cfg.candidates} candidates from {len(train_seeds)} "
          f"episodes{merged} (policy success {'unknown' if train_success is None else f'{train_success:.2f}'}); held out: pairwise accuracy {held['pairwise_accuracy']:.3f}, "
          f"regret {held['regret']:.3f} (random pick {held['random_pick_regret']:.3f})"
          + (f"; {folds}-fold cross-validation: pairwise accuracy {cv['pairwise_accuracy']:.3f}, regret "
             f"{cv['regret']:.3f} (random pick {cv['random_pick_regret']:.3f})" if cv else "") + f" -> {out}")
    return out
