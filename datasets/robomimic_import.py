"""Import a robomimic HDF5 dataset into an episode store.

robomimic layout: ``data`` (attribute ``env_args``, JSON) holds one group per demonstration,
``demo_0, demo_1, ...``, each with ``actions`` (T, Da), ``obs/<key>`` (T, ...), and usually
``states`` (T, Ds, simulator states), ``rewards`` (T,) and ``dones`` (T,). ``mask/<filter>``
lists demo names per split (e.g. ``train``, ``valid``).

Every demonstration becomes one episode, in numeric order (``demo_10`` after ``demo_9``), with
``action`` from ``actions``, every ``obs/<key>`` under its own name, ``states`` as
``sim_state``, ``rewards`` as ``reward`` and ``dones`` as ``done``. ``next_obs`` is not
copied: it is ``obs`` shifted by one step. ``env_args``, the filter masks and the file name
go to the store's ``source`` attribute. The store is written beside its target and moved
into place at the end, so a failed import leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .episode_store import EpisodeStore, StoreError
from .staged_store import staged_store

RENAMED = {"actions": "action", "states": "sim_state", "rewards": "reward", "dones": "done"}
DEFAULT_FPS = 20.0          # robomimic's robosuite datasets record at 20 Hz


def _demo_names(data, path: Path) -> list[str]:
    names = list(data.keys())
    bad = [n for n in names if not re.fullmatch(r"demo_\d+", n)]
    if bad:
        raise StoreError(f"{path}: data/ holds groups that are not demo_<N>: {bad[:5]}")
    if not names:
        raise StoreError(f"{path}: data/ holds no demonstrations")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _episode(demo, name: str, path: Path) -> dict[str, np.ndarray]:
    if "actions" not in demo or "obs" not in demo:
        raise StoreError(f"{path}: data/{name} lacks 'actions' or 'obs' (has {sorted(demo.keys())})")
    episode = {RENAMED[k]: demo[k][()] for k in RENAMED if k in demo}
    for key in demo["obs"].keys():
        if key in episode:
            raise StoreError(f"{path}: data/{name}/obs/{key} collides with the imported key '{key}'")
        episode[key] = demo["obs"][key][()]
    for key, values in episode.items():
        if values.ndim == 1 and key not in ("reward", "done"):
            episode[key] = values[:, None]
    return episode


def _mask(f) -> dict[str, list[str]]:
    if "mask" not in f:
        return {}
    return {k: sorted(v.decode() if isinstance(v, bytes) else str(v) for v in f["mask"][k][()]) for k in f["mask"]}


def import_robomimic(hdf5: str | os.PathLike, out: str | os.PathLike, fps: float = DEFAULT_FPS,
                     overwrite: bool = False, progress: bool = True) -> EpisodeStore:
    import h5py

    hdf5, out = Path(hdf5), Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    try:
        f = h5py.File(hdf5, "r")
    except (OSError, ValueError) as exc:
        raise StoreError(f"{hdf5}: not a readable HDF5 file ({exc})") from None
    with f:
        if "data" not in f:
            raise StoreError(f"{hdf5}: no 'data' group: not a robomimic dataset")
        data = f["data"]
        with staged_store(out, fps) as store:
            for name in tqdm(_demo_names(data, hdf5), desc=f"import {hdf5.name}", disable=not progress):
                store.append_episode(_episode(data[name], name, hdf5))
            env_args = data.attrs.get("env_args")
            store.set_source({"format": "robomimic", "file": str(hdf5.resolve()), "masks": _mask(f),
                              "env_args": json.loads(env_args) if env_args else None})
    return EpisodeStore.open(out)
