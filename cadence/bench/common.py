"""What every benchmark shares: a trained policy (trained now, or a run given), and its results
written as results.json + results.md and printed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from cadence.checkpoint import resolve_checkpoint_dir
from cadence.collect import collect_missing

log = logging.getLogger(__name__)


def trained(name: str, tcfg: DictConfig, checkpoint: str | None, cfg: DictConfig, progress: bool) -> Path:
    if checkpoint:
        return resolve_checkpoint_dir(checkpoint)
    from cadence.train import train

    collect_missing(tcfg.task, cfg.collect, progress=progress)
    log.info("training %s (%d steps)", name, tcfg.train.steps)
    return train(tcfg, Path(tcfg.run_dir), progress=progress)



def write_results(out_dir: Path, result: dict, text: str) -> None:
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    (out_dir / "results.md").write_text(text + "\n")
    print("\n" + text + f"\n\nresults: {out_dir / 'results.json'}")
