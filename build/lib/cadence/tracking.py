"""Run metrics: always a local ``metrics.jsonl``; Weights & Biases when asked (offline by default).

W&B is imported only when enabled, runs in offline mode unless ``mode=online``, and a failure
to start it is reported and ignored: tracking never blocks or breaks training.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)
MODES = ("none", "offline", "online")


class MetricsLogger:
    def __init__(self, run_dir: Path, mode: str = "none", project: str = "cadence",
                 config: Mapping[str, Any] | None = None, name: str | None = None):
        if mode not in MODES:
            raise ValueError(f"tracking.mode must be one of {MODES}, got {mode!r}")
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._wandb = None
        if mode != "none":
            try:
                import wandb
                self._wandb = wandb.init(project=project, name=name, dir=str(run_dir), mode=mode,
                                         config=dict(config or {}), settings=wandb.Settings(silent=True))
            except Exception as exc:  # noqa: BLE001 - tracking must never stop a run
                log.warning("Weights & Biases disabled (%s: %s); metrics go to %s only",
                            type(exc).__name__, exc, self.path)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
