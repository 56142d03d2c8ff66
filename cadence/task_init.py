"""``cadence task init store=data/NAME.zarr out=DIR/task/NAME.yaml [fps=F]``: the ``task=store``
config filled in from a store (observation keys, action key, fps: ``fps=`` where the store records
none), as a YAML to edit and train with ``cadence train --config-dir DIR task=NAME``."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from cadence.datasets.episode_store import StoreError
from cadence.store_task import task_yaml


def run(cfg: DictConfig) -> Path:
    out = Path(cfg.out)
    if out.suffix not in (".yaml", ".yml"):
        raise StoreError(f"out={out}: a task config is a .yaml file (e.g. my_tasks/task/{Path(cfg.store).stem}.yaml)")
    if cfg.fps is not None and not 0 < cfg.fps < float("inf"):
        raise StoreError(f"fps={cfg.fps}: the store's rate must be a positive number of steps per second")
    if out.exists() and not cfg.overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    text = task_yaml(cfg.store, out.stem, cfg.fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    config_dir = out.parent.parent if out.parent.name == "task" else out.parent
    print(f"wrote {out}\ntrain with: cadence train --config-dir {config_dir} task={out.stem}"
          + ("" if out.parent.name == "task" else "  (put it in a folder named task/ first)"))
    return out
