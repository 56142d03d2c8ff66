"""Learning-curve figure of RL fine-tuning: evaluation success against environment steps and wall time."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_learning_curves(curves: Mapping[str, Sequence[Mapping]], path: Path, title: str = "") -> Path:
    """``curves``: per method, rows with ``env_steps``, ``wall_s`` and ``success_rate``. Writes a PNG."""
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    by_steps, by_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, rows in curves.items():
        rows = list(rows)
        success = [r["success_rate"] for r in rows]
        if len(rows) == 1:               # not fine-tuned: one evaluation, drawn as a level line
            for ax in (by_steps, by_time):
                ax.axhline(success[0], linestyle="--", color="gray", label=name)
            continue
        by_steps.plot([r["env_steps"] for r in rows], success, marker="o", markersize=3, label=name)
        by_time.plot([r["wall_s"] for r in rows], success, marker="o", markersize=3, label=name)
    for ax, label in ((by_steps, "environment steps"), (by_time, "wall time (s, evaluations excluded)")):
        ax.set_xlabel(label)
        ax.set_ylabel("evaluation success")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    by_steps.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
