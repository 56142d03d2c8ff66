"""Top-down picture of rollout trajectories on the bimodal reach task."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from cadence.envs.bimodal_reach import GOAL_TOLERANCE, OBSTACLE_RADIUS
from cadence.envs.rollout import RolloutResult

__all__ = ["plot_trajectories"]

_MODE_COLOURS = {"left": "tab:blue", "right": "tab:orange"}
_OTHER_SUCCESS = "tab:purple"
_FAILURE = "tab:red"
_GOAL = "tab:green"
_OBSTACLE = "0.35"


def _category(success: bool, mode: str) -> tuple[str, str]:
    """(legend label, colour) of one episode."""
    if not success:
        return "failure", _FAILURE
    return f"success {mode}", _MODE_COLOURS.get(mode, _OTHER_SUCCESS)


def plot_trajectories(result: RolloutResult, path: str | Path, title: str = "") -> Path:
    """Draw every episode's x, y path (``state[:, 0:2]``) coloured by outcome and mode
    (success-left blue, success-right orange, other successes purple, failures red), the
    obstacle, each goal (``state[0, 4:6]``) with its tolerance disc, and a legend with counts.
    Saves a PNG (Agg) at ``path``, creating parent directories, and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A bare Figure on an Agg canvas: no pyplot state, no global backend switch.
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    counts: dict[str, int] = {}
    colours: dict[str, str] = {}
    for states, ok, mode in zip(result.states, result.success, result.modes):
        states = np.asarray(states)
        if states.ndim != 2 or states.shape[0] == 0 or states.shape[1] < 2:
            continue
        label, colour = _category(bool(ok), str(mode))
        counts[label] = counts.get(label, 0) + 1
        colours[label] = colour
        ax.plot(states[:, 0], states[:, 1], color=colour, lw=1.2, alpha=0.8)
        ax.plot(states[0, 0], states[0, 1], "o", color=colour, ms=3)
        ax.plot(states[-1, 0], states[-1, 1], "." if ok else "x", color=colour, ms=5)
        if states.shape[1] >= 6:
            goal = states[0, 4:6]
            ax.add_patch(Circle(goal, GOAL_TOLERANCE, color=_GOAL, alpha=0.08, lw=0))
            ax.add_patch(Circle(goal, GOAL_TOLERANCE, fill=False, color=_GOAL, lw=0.5,
                                alpha=0.6))
            ax.plot(goal[0], goal[1], "*", color=_GOAL, ms=6)
    ax.add_patch(Circle((0.0, 0.0), OBSTACLE_RADIUS, color=_OBSTACLE, alpha=0.9))

    order = sorted(counts, key=lambda k: (k == "failure", k))
    handles = [Line2D([], [], color=colours[k], lw=2, label=f"{k} ({counts[k]})")
               for k in order]
    handles.append(Line2D([], [], marker="o", ls="", color=_OBSTACLE, ms=10, label="obstacle"))
    handles.append(Line2D([], [], marker="*", ls="", color=_GOAL, ms=8,
                          label=f"goal (tolerance {GOAL_TOLERANCE:g})"))
    ax.legend(handles=handles, loc="best", fontsize=7, framealpha=0.8)

    # Keep the obstacle in view even if no trajectory was drawn.
    r = OBSTACLE_RADIUS * 1.5
    ax.update_datalim([(-r, -r), (r, r)])
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    n = len(result.seeds)
    rate = float(np.mean(result.success)) if n else 0.0
    heading = f"{n} episodes, success {rate:.0%}"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    ax.grid(True, lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
