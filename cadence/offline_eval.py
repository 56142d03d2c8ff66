"""Offline validation: how closely a policy reproduces held-out demonstrations, without a simulator.

The held-out episodes (``train.val_episodes``, never trained on) are replayed as a rollout
would see them: every episode replans every ``exec_horizon`` steps from the recorded
observations, all episodes in one batch, ``eval.offline_samples`` (K) chunks per replan drawn with
their own noise (a stateful policy keeps its per-episode state across an episode's replans, as
in a rollout). Against the recorded actions of the steps each chunk would execute:

* ``l1`` / ``mse`` (mean over dimensions) and ``l1_per_dim`` / ``mse_per_dim``, task units, of
  the first of the K samples;
* ``min_of_k_l1``: per replan the smallest mean L1 among the K samples, averaged over steps like
  ``l1`` (with K = 1 the two are equal): a multimodal policy is not punished for picking the
  other mode the demonstrator did not take;
* ``chunk_jump``: the largest per-dimension change from one chunk's last executed action to the
  next chunk's first, averaged over seams, beside ``demo_step_change``, the same for the
  demonstration's consecutive steps (a smooth policy has a jump close to it).

A plot of predicted against demonstrated actions for a few held-out episodes goes beside
``eval.json``, where these numbers sit under ``offline``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


def replan_points(lengths: np.ndarray, exec_horizon: int) -> int:
    return int(math.ceil(lengths.max() / exec_horizon)) if len(lengths) else 0


@torch.no_grad()
def offline_validate(policy, data, episodes, exec_horizon: int, samples: int, seed: int, device,
                     out_dir: Path | None = None, plot_episodes: int = 0, title: str = "",
                     batch_rows: int = 256) -> dict:
    """Validate ``policy`` on ``episodes`` of ``data`` (a :class:`WindowDataset` over the whole store);
    returns the ``offline`` summary (and writes ``offline_actions.png`` into ``out_dir``). The
    episodes run in groups of at most ``batch_rows`` rows (episodes x samples) per policy call."""
    episodes = [int(e) for e in episodes]
    if not episodes:
        raise ValueError("offline validation needs at least one held-out episode (train.val_episodes)")
    if samples < 1:
        raise ValueError(f"eval.offline_samples must be >= 1, got {samples}")
    policy.eval()
    ends = data.store.episode_ends
    starts = np.array([0 if e == 0 else ends[e - 1] for e in episodes], dtype=np.int64)
    lengths = np.array([ends[e] for e in episodes], dtype=np.int64) - starts
    actions = data.arrays[data.action_key]
    gen = torch.Generator(device=device).manual_seed(seed)
    acc = {"predicted": [[] for _ in episodes], "l1": [], "sq": [], "best": [], "jumps": []}
    group = max(1, batch_rows // samples)
    for g in range(0, len(episodes), group):
        _validate_group(policy, data, starts[g:g + group], lengths[g:g + group], g, exec_horizon, samples, gen,
                        device, acc)
    demo_jumps = []
    for s, n in zip(starts, lengths):
        demo = actions[s:s + n].double().numpy()
        cuts = np.arange(exec_horizon, n, exec_horizon)
        demo_jumps += np.abs(demo[cuts] - demo[cuts - 1]).max(-1).tolist()
    l1, sq, best = np.concatenate(acc["l1"]), np.concatenate(acc["sq"]), acc["best"]
    summary = {
        "episodes": episodes, "samples": samples, "exec_horizon": exec_horizon, "steps": int(lengths.sum()),
        "l1": float(l1.mean()), "mse": float(sq.mean()),
        "l1_per_dim": l1.mean(0).tolist(), "mse_per_dim": sq.mean(0).tolist(),
        "min_of_k_l1": float(np.average([b for b, _ in best], weights=[n for _, n in best])),
        # None (null) when no held-out episode is longer than one chunk: there is no seam
        "chunk_jump": float(np.mean(acc["jumps"])) if acc["jumps"] else None,
        "demo_step_change": float(np.mean(demo_jumps)) if demo_jumps else None,
    }
    if out_dir is not None and plot_episodes > 0:
        summary["plot"] = str(_plot(actions, starts, lengths, acc["predicted"], episodes, exec_horizon, plot_episodes,
                                    Path(out_dir) / "offline_actions.png", title))
    return summary


def _validate_group(policy, data, starts, lengths, first, ta, samples, gen, device, acc) -> None:
    """Replay one group of episodes (row ``e * K + k``: episode ``e``, sample ``k``) into ``acc``."""
    to = policy.obs_horizon
    actions = data.arrays[data.action_key]
    n_rows = len(starts) * samples
    row_ep = np.repeat(np.arange(len(starts)), samples)
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()
    last_action = np.full((n_rows, actions.shape[-1]), np.nan)
    previous = np.arange(n_rows)
    for i in range(replan_points(lengths, ta)):
        t = i * ta
        running = np.flatnonzero(t < lengths[row_ep])
        if len(running) != len(previous):
            keep = getattr(policy, "keep_rows", None)
            if callable(keep):
                keep(np.searchsorted(previous, running))
        previous = running
        ep = row_ep[running]
        first_row, last_row = starts[ep], starts[ep] + lengths[ep] - 1
        obs_idx = np.clip(starts[ep, None] + t - (to - 1) + np.arange(to), first_row[:, None], last_row[:, None])
        obs = {k: data.arrays[k][torch.from_numpy(obs_idx)].to(device) for k in data.obs_keys}
        chunk = policy.predict_chunk(obs, generator=gen).executable(ta).float().cpu().numpy()   # (R, Ta, Da)
        steps = np.minimum(ta, lengths[ep] - t)                                                 # recorded steps left
        act_idx = np.minimum(starts[ep, None] + t + np.arange(ta), last_row[:, None])
        demo = actions[torch.from_numpy(act_idx)].double().numpy()
        valid = np.arange(ta)[None, :] < steps[:, None]                                         # (R, Ta)
        err = np.abs(chunk - demo)
        row_l1 = (err.mean(-1) * valid).sum(1) / steps                                          # mean L1 per row
        seam = ~np.isnan(last_action[running, 0])
        acc["jumps"] += np.abs(chunk[seam, 0] - last_action[running[seam]]).max(-1).tolist()
        last_action[running] = chunk[np.arange(len(running)), steps - 1]
        for r in np.flatnonzero(running % samples == 0):                                       # sample 0
            acc["predicted"][first + ep[r]].append(chunk[r, :steps[r]])
            acc["l1"].append(err[r, :steps[r]])
            acc["sq"].append(err[r, :steps[r]] ** 2)
        for e in np.unique(running // samples):          # each replan: its best sample, weighted by its steps
            mine = running // samples == e
            acc["best"].append((row_l1[mine].min(), steps[mine][0]))


def _plot(actions, starts, lengths, predicted, episodes, ta, n_plot, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_plot = min(n_plot, len(episodes))
    dims = min(actions.shape[-1], 6)
    fig, axes = plt.subplots(dims, n_plot, figsize=(4 * n_plot, 1.8 * dims + 0.6), squeeze=False, sharex="col")
    for c in range(n_plot):
        demo = actions[starts[c]:starts[c] + lengths[c]].double().numpy()
        pred = np.concatenate(predicted[c])
        for d in range(dims):
            ax = axes[d, c]
            ax.plot(demo[:, d], color="black", lw=1.2, label="demonstrated")
            ax.plot(pred[:, d], color="tab:orange", lw=1.0, label="predicted")
            for seam in range(ta, len(pred), ta):
                ax.axvline(seam, color="tab:orange", alpha=0.15, lw=0.8)
            if c == 0:
                ax.set_ylabel(f"action[{d}]")
        axes[0, c].set_title(f"held-out episode {episodes[c]}", fontsize=9)
        axes[-1, c].set_xlabel("step")
    axes[0, 0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def format_offline(summary: dict) -> str:
    return (f"offline on {len(summary['episodes'])} episodes: action L1 {summary['l1']:.4f}, "
            f"min-of-{summary['samples']} L1 {summary['min_of_k_l1']:.4f}, MSE {summary['mse']:.4g}, "
            f"chunk jump {_fmt(summary['chunk_jump'])} (demonstration {_fmt(summary['demo_step_change'])})")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_offline(summary: dict, out_dir: Path) -> Path:
    """``eval.json`` holding the summary under ``offline`` (merged into an existing one)."""
    path = Path(out_dir) / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**existing, "offline": summary}, indent=2))
    return path
