"""Receding-horizon policy rollouts over a gymnasium vector environment.

All episodes (one per seed) run in lockstep in a gymnasium vector environment: a
:class:`~gymnasium.vector.SyncVectorEnv` in this process, or with ``async_envs=True`` an
:class:`~gymnasium.vector.AsyncVectorEnv` with one worker process per episode (the simulators
step in parallel; the policy still sees one batch). At each replan the policy sees, for every env whose episode is still running, the last
``obs_horizon`` observations (padded at the episode start by repeating the reset observation)
and returns an :class:`~cadence.policies.action_chunk.ActionChunk`; ``exec_horizon`` actions of it are
executed, one per env step, then the policy is asked again.

Gymnasium 1.x vector envs reset a finished sub-env on the *next* step, so a ``done`` mask is
kept and everything a sub-env does after its episode ended is ignored.
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from cadence.envs.lookahead import lookahead_base, run_branches

__all__ = ["RolloutResult", "rollout", "vector_env"]


@dataclass
class RolloutResult:
    """Per-episode outcomes of :func:`rollout`, in the order of ``seeds``."""

    seeds: list[int]
    success: np.ndarray            # bool (N,)
    returns: np.ndarray            # float (N,)
    lengths: np.ndarray            # int (N,): env steps taken in the episode
    modes: list[str]               # info["mode"] at the episode's end, "none" if not reported
    max_rewards: np.ndarray = field(default_factory=lambda: np.zeros(0))   # float (N,): best step reward
    final_info: dict[str, np.ndarray] = field(default_factory=dict)        # info[k] at each episode's end
    states: list[np.ndarray] = field(default_factory=list)  # per episode (L+1, Ds)
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W*V, 3) uint8 per step

    def episodes(self) -> list[dict]:
        """One JSON-able record per episode (seed, success, length, return, mode, final info)."""
        return [{"seed": seed, "success": bool(self.success[i]), "length": int(self.lengths[i]),
                 "return": float(self.returns[i]), "mode": self.modes[i],
                 **{k: float(v[i]) for k, v in self.final_info.items()}} for i, seed in enumerate(self.seeds)]

    @classmethod
    def concat(cls, parts: Sequence["RolloutResult"]) -> "RolloutResult":
        """The episodes of ``parts`` one after another (e.g. evaluation waves, or ranks' shares);
        the frames are the first part's."""
        if not parts:
            raise ValueError("nothing to concatenate")
        keys = list(parts[0].final_info)
        return cls(seeds=[s for p in parts for s in p.seeds],
                   success=np.concatenate([p.success for p in parts]),
                   returns=np.concatenate([p.returns for p in parts]),
                   lengths=np.concatenate([p.lengths for p in parts]),
                   modes=[m for p in parts for m in p.modes],
                   max_rewards=np.concatenate([p.max_rewards for p in parts]),
                   final_info={k: np.concatenate([p.final_info[k] for p in parts]) for k in keys},
                   states=[s for p in parts for s in p.states], frames=list(parts[0].frames))

    def summary(self) -> dict:
        """JSON-able aggregate numbers.

        ``mode_shares``: fraction of the *successful* episodes per mode (keys "left", "right"
        and any other mode seen among the successes; empty if none succeeded).
        ``mode_counts``: the number of successful episodes per mode (same keys; "left" and
        "right" always present).
        """
        n = len(self.seeds)
        success = np.asarray(self.success, dtype=bool)
        n_success = int(success.sum())
        counts: dict[str, int] = {"left": 0, "right": 0}
        for mode, ok in zip(self.modes, success):
            if ok:
                counts[str(mode)] = counts.get(str(mode), 0) + 1
        shares = {m: c / n_success for m, c in counts.items()} if n_success else {}
        return {
            "n_episodes": n,
            "n_success": n_success,
            "success_rate": float(success.mean()) if n else 0.0,
            "mean_return": float(np.mean(self.returns)) if n else 0.0,
            "mean_length": float(np.mean(self.lengths)) if n else 0.0,
            "mode_shares": shares,
            "mode_counts": counts,
            "mean_max_reward": float(np.mean(self.max_rewards)) if len(self.max_rewards) else 0.0,
            **{f"mean_final_{k}": float(np.mean(v)) for k, v in self.final_info.items()},
        }


# --- helpers ---------------------------------------------------------------------------

def _info_at(infos: Any, key: str, i: int, default: Any) -> Any:
    """``infos[key]`` of sub-env ``i``: gymnasium 1.x dict of arrays with ``_key`` masks, or a
    list/tuple of per-env dicts (older layout)."""
    if isinstance(infos, dict):
        if key not in infos:
            return default
        mask = infos.get("_" + key)
        if mask is not None and not bool(np.asarray(mask)[i]):
            return default
        value = infos[key]
        try:
            return value[i]
        except (TypeError, IndexError, KeyError):
            return value
    if isinstance(infos, (list, tuple)) and i < len(infos) and isinstance(infos[i], dict):
        return infos[i].get(key, default)
    return default


def _as_dict(obs: Any) -> dict[str, np.ndarray]:
    return obs if isinstance(obs, dict) else {"obs": obs}


class _RolloutEnv(gym.Wrapper):
    """A rollout's sub-env. ``frame()``: the env's render as uint8 while ``filming`` is set, else
    None (nothing rendered). ``run_branches()``: the :class:`~cadence.envs.lookahead.Branch` of each
    of ``branches``' plans, run in a scratch env of the same task (made on first use) from their
    snapshots (None: this env's state; :mod:`cadence.envs.lookahead`). Methods of the env, so a
    vector env's ``call`` reaches them in a worker process too."""

    def __init__(self, make_env: Callable[[], gym.Env], filming: bool):
        super().__init__(make_env())
        self.make_env, self.filming = make_env, filming
        self.branches: tuple | None = None      # (states, plans, obs_keys, keep, with_state) for run_branches
        self._scratch: gym.Env | None = None

    def frame(self) -> np.ndarray | None:
        if not self.filming:
            return None
        frame = self.env.render()
        if frame is None:
            raise RuntimeError(
                "env.render() returned None: for video_episodes > 0 make_env must create the env "
                "with render_mode='rgb_array'")
        frame = np.asarray(frame)
        return frame if frame.dtype == np.uint8 else np.clip(frame, 0, 255).astype(np.uint8)

    def scratch(self) -> gym.Env:
        if self._scratch is None:
            self._scratch = self.make_env()
            self._scratch.reset(seed=0)
        return self._scratch

    def run_branches(self) -> list | None:
        if self.branches is None:
            return None
        (states, plans, obs_keys, keep, with_state), self.branches = self.branches, None
        if states is None:
            states = [lookahead_base(self.env).snapshot()] * len(plans)
        return run_branches(self.scratch(), states, plans, obs_keys, keep, with_state)

    def close(self):
        if self._scratch is not None:
            self._scratch.close()
        super().close()


def _lookahead(envs: gym.vector.VectorEnv, rows: np.ndarray, history: dict[str, np.ndarray], exec_horizon: int,
               device: torch.device, plans: np.ndarray, continue_with: Callable | None = None,
               chunks: int = 0) -> np.ndarray:
    """Scores (B, K) of plans (B, K, T, Da) for the sub-envs ``rows``, each scored in its own env
    (in parallel in an async vector env's workers). With ``chunks`` > 0 a plan's first
    ``exec_horizon`` actions run (those the rollout runs of a chunk), then ``chunks`` chunks of
    ``continue_with`` (a ``predict_chunk``-like callable of the observations (N, To, ...) and ``group``
    (N,): the row b of ``plans`` each continuation follows; returns an ActionChunk), ``exec_horizon``
    actions of each; the score is where the last leaves the episode. ``history``: the rows'
    observations (B, To, ...) now."""
    b, k = plans.shape[:2]
    if chunks <= 0:
        branches = _branch(envs, rows, {j: (None, plans[j]) for j in range(b)}, [], 0, False)
        return np.array([[branch.score for branch in branches[j]] for j in range(b)])
    keys = list(history)
    to = next(iter(history.values())).shape[1]
    branches = _branch(envs, rows, {j: (None, plans[j, :, :exec_horizon]) for j in range(b)}, keys, to, True)
    seen = [[{key: history[key][j] for key in keys}] * k for j in range(b)]    # each branch's last To observations
    for round_ in range(chunks):
        alive = [(j, c) for j in range(b) for c in range(k) if not branches[j][c].ended]
        if not alive:
            break
        for j, c in alive:
            tail = branches[j][c].obs
            seen[j][c] = {key: np.concatenate([seen[j][c][key], tail[key]])[-to:] for key in keys} if tail else seen[j][c]
        batch = {key: _to_tensor(np.stack([seen[j][c][key] for j, c in alive]), device) for key in keys}
        chunk = continue_with(batch, group=np.array([j for j, _ in alive]))
        actions = chunk.executable(exec_horizon).detach().to("cpu", torch.float32).numpy()
        work: dict[int, list[int]] = {}
        for j, c in alive:
            work.setdefault(j, []).append(c)
        at = {pair: i for i, pair in enumerate(alive)}
        ran = _branch(envs, rows, {j: ([branches[j][c].state for c in cs], actions[[at[j, c] for c in cs]])
                                   for j, cs in work.items()}, keys, to, round_ < chunks - 1)
        for j, cs in work.items():
            for c, branch in zip(cs, ran[j]):
                branches[j][c] = branch
    return np.array([[branch.score for branch in branches[j]] for j in range(b)])


def _branch(envs: gym.vector.VectorEnv, rows: np.ndarray, work: dict[int, tuple], keys: list[str],
            keep: int, with_state: bool) -> dict[int, list]:
    """``work``: plan row j -> (snapshots or None for the env's state, plans (n, T, Da)), run in sub-env
    ``rows[j]``; returns row j -> its branches (with the state each ends in if ``with_state``)."""
    per_env: list[tuple | None] = [None] * envs.num_envs
    for j, (states, plans) in work.items():
        per_env[rows[j]] = (states, plans, keys, keep, with_state)
    envs.set_attr("branches", per_env)
    ran = envs.call("run_branches")
    return {j: ran[rows[j]] for j in work}


def vector_env(make_env: Callable[[], gym.Env], n: int, n_video: int = 0, async_envs: bool = False,
               preload: Sequence[str] = ()) -> gym.vector.VectorEnv:
    """``n`` sub-envs of ``make_env()``, the first ``n_video`` filmed (``make_env`` must then
    render), for :func:`rollout`; pass it as ``envs`` to run several rollouts in the same one.
    ``async_envs``: one worker process per sub-env, forked from a server process that has
    imported the env code and the modules in ``preload`` once (they apply when that server
    starts: the first async vector env of the process)."""
    fns = [partial(_RolloutEnv, make_env, i < n_video) for i in range(n)]
    if async_envs:
        # Workers fork from a clean server process that has imported the env code once: fork from
        # this process can deadlock (its torch threads and GL contexts), spawn re-imports per worker.
        modules = ["cadence.envs.rollout", "cadence.envs.task_env", *preload]
        multiprocessing.get_context("forkserver").set_forkserver_preload(list(dict.fromkeys(modules)))
        return gym.vector.AsyncVectorEnv(fns, context="forkserver")
    return gym.vector.SyncVectorEnv(fns)


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)


# --- rollout ---------------------------------------------------------------------------

def rollout(policy, make_env: Callable[[], gym.Env] | None, seeds: Sequence[int], obs_horizon: int,
            exec_horizon: int, obs_keys: Sequence[str], device: str | torch.device = "cpu",
            video_episodes: int = 0, progress: bool = True,
            info_metrics: Sequence[str] = (), async_envs: bool = False,
            envs: gym.vector.VectorEnv | None = None) -> RolloutResult:
    """Run one episode per seed with receding-horizon control and return the outcomes.

    ``policy.predict_chunk({key: (B, obs_horizon, ...) tensor})`` is called with the B envs
    still running (float observations as float32, uint8 ones kept uint8, on ``device``) and
    must return an ActionChunk whose batch is B; a policy with ``keep_rows(rows)`` is told
    which rows of the previous call's batch are still running before each call. ``frames`` holds, for the first
    ``video_episodes`` envs, their renders tiled side by side, one tiled frame for the reset
    and one per env step until the last of those episodes ended (a finished episode keeps
    showing its last frame). ``max_rewards`` is each episode's largest step reward (PushT's
    score in the Diffusion Policy paper); ``final_info[k]`` the number ``info[k]`` held at each
    episode's last step, for every ``k`` in ``info_metrics`` (NaN if the env never reported it).
    A policy whose ``uses_lookahead`` is true (search with the ``oracle`` verifier) is also given
    ``lookahead=``: a function scoring plans (B, K, T, Da) of the running envs, each in a copy of
    its env from its current state (:mod:`cadence.envs.lookahead`), the envs themselves untouched.
    One whose ``uses_previous`` is true (the coherence verifier) is given ``previous=``: the
    actions its last chunk planned beyond those executed, for the rows still running.
    ``async_envs``: step the envs in worker processes (``make_env`` then runs there; it is
    cloudpickled, so a lambda works); the outcomes are the same as in this process.
    ``envs``: an open :func:`vector_env` to run in instead (``make_env`` and ``async_envs`` are
    then unused; it is left open): it needs at least ``len(seeds)`` sub-envs, and those beyond
    step with a neutral action until the last episode ends, their outcomes dropped.
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    if n == 0:
        raise ValueError("seeds must not be empty")
    if obs_horizon < 1 or exec_horizon < 1:
        raise ValueError(f"obs_horizon and exec_horizon must be >= 1, got {obs_horizon}, "
                         f"{exec_horizon}")
    obs_keys = list(obs_keys)
    device = torch.device(device)
    n_video = max(0, min(int(video_episodes), n))
    own = envs is None
    if own:
        envs = vector_env(make_env, n, n_video, async_envs)
    elif envs.num_envs < n:
        raise ValueError(f"{n} seeds need at least {n} envs, the vector env has {envs.num_envs}")
    n_pad = envs.num_envs - n                     # spare sub-envs: their episodes are not counted

    bar = tqdm(desc="rollout", unit="step", disable=not progress, leave=False)
    try:
        if not own:
            envs.set_attr("filming", [i < n_video for i in range(envs.num_envs)])
        obs, _ = envs.reset(seed=seeds + seeds[-1:] * n_pad)
        obs = _as_dict(obs)
        missing = [k for k in obs_keys if k not in obs]
        if missing:
            raise KeyError(f"observation keys {missing} not in the env's observation "
                           f"(has {sorted(obs)})")

        # Observation history per key: (N, To, ...), padded with the reset observation.
        history = {k: np.repeat(np.asarray(obs[k])[:, None], obs_horizon, axis=1)
                   for k in obs_keys}
        has_state = "state" in obs
        states: list[list[np.ndarray]] = [
            [np.array(obs["state"][i], copy=True)] if has_state else [] for i in range(n)]

        done = np.zeros(n, dtype=bool)
        success = np.zeros(n, dtype=bool)
        returns = np.zeros(n, dtype=np.float64)
        max_rewards = np.full(n, -np.inf)
        final_info = {k: np.full(n, np.nan) for k in info_metrics}
        lengths = np.zeros(n, dtype=np.int64)
        modes = ["none"] * n

        frames: list[np.ndarray] = []
        last_frames: list[np.ndarray] = []
        if n_video:
            last_frames = list(envs.call("frame")[:n_video])
            frames.append(np.concatenate(last_frames, axis=1))
            filming = np.arange(n) < n_video

        action_space = envs.single_action_space
        idle_action = np.zeros(action_space.shape, dtype=action_space.dtype)
        if isinstance(action_space, gym.spaces.Box):
            idle_action = np.clip(idle_action, action_space.low, action_space.high).astype(
                action_space.dtype)

        reset = getattr(policy, "reset", None)
        if callable(reset):
            reset()
        keep_rows = getattr(policy, "keep_rows", None)     # stateful policies follow the shrinking batch
        lookahead = getattr(policy, "uses_lookahead", False)  # search's oracle verifier: plans scored in copies
        wants_plan = getattr(policy, "uses_previous", False)  # search's coherence verifier: the last plan
        previous, plan = None, None

        with torch.no_grad():
            while not done.all():
                running = np.flatnonzero(~done)
                kept = None if previous is None else np.searchsorted(previous, running)
                if kept is not None and len(running) != len(previous) and callable(keep_rows):
                    keep_rows(kept)
                previous = running
                batch = {k: _to_tensor(history[k][running], device) for k in obs_keys}
                extra = {}
                if lookahead:
                    extra["lookahead"] = partial(_lookahead, envs, running, {k: history[k][running] for k in obs_keys},
                                                 exec_horizon, device)
                if plan is not None:
                    extra["previous"] = plan[kept]
                chunk = policy.predict_chunk(batch, **extra)
                if wants_plan:       # what this chunk planned beyond the actions about to run
                    rest = chunk.actions[:, chunk.start + exec_horizon:]
                    plan = rest if rest.shape[1] else None
                actions = chunk.executable(exec_horizon).detach().to("cpu", torch.float32).numpy()
                if actions.shape[0] != len(running):
                    raise ValueError(f"policy returned a chunk for {actions.shape[0]} envs, "
                                     f"expected {len(running)}")
                for t in range(exec_horizon):
                    active = running[~done[running]]
                    if active.size == 0:
                        break
                    full = np.broadcast_to(idle_action, (n + n_pad, *idle_action.shape)).copy()
                    # rows of `actions` follow `running`; pick those still active
                    full[active] = actions[np.searchsorted(running, active), t].reshape(
                        (active.size, *idle_action.shape))
                    obs, reward, terminated, truncated, infos = envs.step(full)
                    obs = _as_dict(obs)
                    bar.update(1)
                    for i in active:
                        returns[i] += float(reward[i])
                        max_rewards[i] = max(max_rewards[i], float(reward[i]))
                        for k in final_info:
                            final_info[k][i] = float(_info_at(infos, k, i, np.nan))
                        lengths[i] += 1
                        for k in obs_keys:
                            history[k][i, :-1] = history[k][i, 1:]
                            history[k][i, -1] = obs[k][i]
                        if has_state:
                            states[i].append(np.array(obs["state"][i], copy=True))
                        if terminated[i] or truncated[i]:
                            done[i] = True
                            success[i] = bool(_info_at(infos, "is_success", i, False))
                            mode = _info_at(infos, "mode", i, None)
                            modes[i] = "none" if mode is None else str(mode)
                    if n_video and np.any(active < n_video):
                        # render after the step, before the next step's autoreset, so a
                        # finished episode's terminal state is its last frame
                        rendered = envs.call("frame")
                        for i in active[active < n_video]:
                            last_frames[i] = rendered[i]
                        frames.append(np.concatenate(last_frames, axis=1))
                        if np.any(filming & done):     # finished episodes need no more renders
                            filming &= ~done
                            envs.set_attr("filming", filming.tolist() + [False] * n_pad)
                    bar.set_postfix(running=int((~done).sum()))
    finally:
        bar.close()
        if own:
            envs.close()

    return RolloutResult(
        seeds=seeds, success=success, returns=returns, lengths=lengths, modes=modes,
        max_rewards=np.where(np.isfinite(max_rewards), max_rewards, 0.0), final_info=final_info,
        states=[np.stack(s) if s else np.zeros((0,), np.float32) for s in states],
        frames=frames)
