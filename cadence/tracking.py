"""Run metrics: always a local ``metrics.jsonl``; Weights & Biases offline by default (``tracking=``).

W&B is imported only when enabled, runs offline (the run stays under ``<run_dir>/wandb/`` for a
later ``wandb sync``) unless ``tracking=online``, and a failure to start it is reported and
ignored: tracking never blocks or breaks training. Every record also goes to ``metrics.jsonl``:
numbers as they are, a video as its file path, a table as ``{"columns": [...], "rows": [...]}``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger(__name__)
MODES = ("none", "offline", "online")
LATENCY_COLUMNS = ("step", "sample_steps", "ms_per_chunk", "ms_per_chunk_p90", "success_rate")


class MetricsLogger:
    def __init__(self, run_dir: Path, mode: str = "none", project: str = "cadence",
                 config: Mapping[str, Any] | None = None, name: str | None = None):
        if mode not in MODES:
            raise ValueError(f"tracking.mode must be one of {MODES}, got {mode!r}")
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._wandb = None
        self._latency_rows: list[list] = []
        if mode != "none":
            try:
                import wandb
                # absolute: a W&B service process started elsewhere (inherited WANDB_SERVICE) has its own cwd
                self._wandb = wandb.init(project=project, name=name, dir=str(Path(run_dir).resolve()), mode=mode,
                                         config=dict(config or {}), settings=wandb.Settings(silent=True))
            except Exception as exc:  # noqa: BLE001 - tracking must never stop a run
                log.warning("Weights & Biases disabled (%s: %s); metrics go to %s only",
                            type(exc).__name__, exc, self.path)

    @property
    def wandb_dir(self) -> Path | None:
        """This run's W&B folder (``.../wandb/offline-run-*`` or ``run-*``), None without W&B."""
        return None if self._wandb is None else Path(self._wandb.dir).parent

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._write(step, {k: _jsonable(v) for k, v in metrics.items()})
        self._to_wandb(lambda wandb: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step)

    def log_video(self, key: str, path: str | Path, step: int) -> None:
        """A rollout video file (gif or mp4)."""
        self._write(step, {key: str(path)})
        self._to_wandb(lambda wandb: {key: wandb.Video(str(path), format=Path(path).suffix.lstrip("."))}, step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        self._write(step, {key: {"columns": list(columns), "rows": [[_jsonable(v) for v in r] for r in rows]}})
        self._to_wandb(lambda wandb: {key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step)

    def log_evaluation(self, summary: Mapping[str, Any], step: int) -> None:
        """An evaluation summary: its numbers as ``eval/<key>``, its video, and the latency table
        (one row per evaluation so far: sampling steps, ms per chunk, success)."""
        self.log({f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}, step)
        if summary.get("video"):
            self.log_video("eval/rollouts", summary["video"], step)
        if "ms_per_chunk" in summary:
            self._latency_rows.append([step, *(summary.get(k) for k in LATENCY_COLUMNS[1:])])
            self.log_table("eval/latency", LATENCY_COLUMNS, self._latency_rows, step)

    def log_offline(self, summary: Mapping[str, Any], step: int) -> None:
        """An offline validation (:mod:`cadence.offline_eval`): its numbers as ``offline/<key>``
        (per dimension as ``offline/<key>/<d>``) and its plot."""
        record = {f"offline/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
        for key in ("l1_per_dim", "mse_per_dim"):
            record.update({f"offline/{key.removesuffix('_per_dim')}/{d}": v for d, v in enumerate(summary[key])})
        self.log(record, step)
        if summary.get("plot"):
            self._to_wandb(lambda wandb: {"offline/actions": wandb.Image(str(summary["plot"]))}, step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()

    def _write(self, step: int, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps({"step": step, "time": round(time.time(), 3), **record}) + "\n")
        self._file.flush()

    def _to_wandb(self, build, step: int) -> None:
        if self._wandb is None:
            return
        try:
            import wandb
            self._wandb.log(build(wandb), step=step)
        except Exception as exc:  # noqa: BLE001 - a media file W&B cannot read must not stop a run
            log.warning("Weights & Biases could not log step %d (%s: %s)", step, type(exc).__name__, exc)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
