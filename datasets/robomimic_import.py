"""Import a robomimic-layout HDF5 dataset (robomimic's own, Isaac Lab's) into an episode store.

``cadence import format=robomimic source=F.hdf5 out=X.zarr [episodes=[N, ...]] [fps=20]``
calls :func:`import_robomimic`.

robomimic layout: ``data`` (attributes ``env_args``, JSON, and ``total``) holds one group per
demonstration, ``demo_0, demo_1, ...`` (attributes ``num_samples`` and often ``model_file``, the
MJCF scene), each with ``actions`` (T, Da), ``obs/<key>`` (T, ...), and usually ``states``
(T, Ds, simulator states), ``rewards`` (T,) and ``dones`` (T,). ``mask/<filter>`` lists demo
names per split (e.g. ``train``, ``valid``).

Isaac Lab's recorder (``HDF5DatasetFileHandler``) writes the same outline with nested groups:
``data`` (``env_args`` = ``{"env_name": ..., "type": 2}``, ``total``), ``data/demo_N``
(attributes ``num_samples``, ``success``, sometimes ``seed``) with ``actions``, ``obs/<key>``
(or ``obs/<group>/<key>``, or ``obs`` one dataset), ``states/articulation/<name>/joint_position``,
``states/rigid_object/<name>/root_pose``, ..., ``initial_state/...`` (the same tree, one row
each) and sometimes ``processed_actions``.

Every demonstration becomes one episode, in numeric order (``demo_10`` after ``demo_9``).
Store keys (a key has no ``/``; nested group names are joined with ``.``):

* ``actions`` -> ``action``, a ``states`` dataset -> ``sim_state``, ``rewards`` -> ``reward``,
  ``dones`` -> ``done``;
* ``obs/<key>`` -> ``<key>``, ``obs/<a>/<b>`` -> ``a.b`` (``obs/policy/joint_pos`` ->
  ``policy.joint_pos``), an ``obs`` dataset -> ``obs``;
* any other dataset or group below the demo keeps its path with ``.``:
  ``states/articulation/robot/joint_position`` -> ``states.articulation.robot.joint_position``,
  ``processed_actions`` -> ``processed_actions``;
* ``next_obs`` is not copied (it is ``obs`` shifted by one step); ``initial_state`` goes to the
  metadata (below).

A demo must hold ``actions`` and ``obs`` (a raw robosuite ``demo.hdf5``, which has no ``obs``,
is :mod:`.robosuite_import`'s). Two paths that become the same key, or a name that cannot be a
key, are refused naming both. Every dataset imported must have the demo's length (``actions``'
first dimension, and ``num_samples`` where given). 1-D datasets become ``(T, 1)`` except
``reward`` and ``done``.

The store's ``source`` attribute keeps: ``format``, ``file``, ``env_args``, ``masks``,
``data_attrs`` (the other scalar attributes of ``data``, e.g. ``total``), and ``demos``, one
entry per imported episode in store order::

    {"name": "demo_3", "attrs": {"num_samples": 120, "success": true, "seed": 7},
     "dropped_attrs": [...],            # attributes not kept: arrays, strings > 4096 characters
     "model_file": 0,                   # index into source["model_files"], where the demo has one
     "initial_state": {"articulation": {"robot": {"joint_position": [[...]]}}, ...}}

Per-demo attributes kept are scalars (numbers, bools, strings up to 4096 characters).
``model_file`` (robomimic's MJCF XML, up to ``MAX_MODEL_CHARS``) is stored once per distinct
text in ``source["model_files"]`` and referred to by index. ``initial_state`` keeps the file's
group tree as nested lists (shape as stored, e.g. ``(1, 9)``), at most
``MAX_INITIAL_STATE`` values per demo; its leaves are what Isaac Lab's ``reset_to`` takes (as
tensors). ``source`` as a whole must fit ``hdf5_checks.SOURCE_BYTES`` (half of
``LIMITS["json_bytes"]``, the bound store readers put on ``.zattrs``): a file whose metadata
is larger is refused, naming the limit, at the demo that makes it so. The store is written
beside its target and moved into place at the end, so a failed import leaves nothing behind.

``episodes=[N, ...]`` imports only ``demo_N`` for those N (in numeric order); a number the file
lacks is refused.

The file is data from elsewhere (:mod:`.hdf5_checks`): a group or dataset that is missing,
unreadable, of the wrong kind or an external link to another file, a dataset that is not
numeric, not within the ``LIMITS`` (steps, per-step elements), not as long as the demo's
``actions`` (and its ``num_samples`` attribute), or larger than its bytes on disk can
decompress to, groups nested deeper than 16 or holding over 1024 datasets, and ``env_args``
or masks that are not JSON / strings are refused with a :class:`~cadence.errors.CadenceError`
naming the file and the object, before it is read.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from cadence.untrusted import LIMITS, check_int

from .episode_store import EpisodeStore, StoreError, valid_key
from .episode_budget import EpisodeBudget
from .hdf5_checks import (MAX_MEMBERS, SourceBudget, attr, bounded_read, check_source, demo_names, episodes_option,
                          json_attr, kind_of, member, open_file, read_array, read_steps, reading, scalar_attrs,
                          text_attr, walk, where_of)
from .staged_store import staged_store

RENAMED = {"actions": "action", "states": "sim_state", "rewards": "reward", "dones": "done"}
SKIPPED = ("next_obs",)                 # obs shifted by one step: not copied
DEFAULT_FPS = 20.0          # robomimic's robosuite datasets record at 20 Hz
MAX_INITIAL_STATE = 65_536  # values of one demo's initial_state kept in the store's metadata
MAX_MODEL_CHARS = 8 * 2 ** 20   # one demo's model_file (MJCF XML; robosuite's Lift scene: 40 kB)
MAX_NAME_BYTES = 1024       # one demo name in a mask/<filter> list


def store_key(names: tuple[str, ...]) -> str:
    """The store key of the dataset at ``names`` below a demo (``("obs", "policy", "joint_pos")``
    -> ``policy.joint_pos``)."""
    top, rest = names[0], names[1:]
    if not rest:
        return RENAMED.get(top, top)
    return ".".join(rest if top == "obs" else names)


def _datasets(demo, path: Path) -> dict[str, h5py.Dataset]:
    """Store key -> dataset, for every dataset the demo's episode is made of."""
    found: dict[str, h5py.Dataset] = {}
    with reading(where_of(path, demo)):
        tops = sorted(demo.keys())
    for top in tops:
        if top in SKIPPED or top == "initial_state":
            continue
        if kind_of(demo, top, path) is h5py.Group:
            members = walk(member(demo, top, path, h5py.Group), path, (top,))
        else:
            members = [((top,), member(demo, top, path, h5py.Dataset))]
        for names, ds in members:
            key, where = store_key(names), where_of(path, demo, "/".join(names))
            if not valid_key(key):
                raise StoreError(f"{where}: its store key {key!r} is not one file name (data/<key>)"[:300])
            if key in found:
                raise StoreError(f"{where_of(path, found[key])} and {where.split(': ', 1)[1]} both become "
                                 f"the store key '{key}'")
            found[key] = ds
        if len(found) > MAX_MEMBERS:
            raise StoreError(f"{where_of(path, demo)}: holds more than {MAX_MEMBERS:,} datasets")
    return found


def _nested(values: dict[tuple[str, ...], list]) -> dict:
    tree: dict = {}
    for names, value in values.items():
        node = tree
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = value
    return tree


def _initial_state(demo, path: Path):
    """``initial_state`` as nested lists (its group tree kept), at most ``MAX_INITIAL_STATE`` values."""
    if kind_of(demo, "initial_state", path) is h5py.Dataset:
        ds = member(demo, "initial_state", path, h5py.Dataset)
        return read_array(ds, where_of(path, ds), MAX_INITIAL_STATE).tolist()
    values, left = {}, MAX_INITIAL_STATE
    for names, ds in walk(member(demo, "initial_state", path, h5py.Group), path):
        array = read_array(ds, where_of(path, ds), left)
        left -= array.size
        values[names] = array.tolist()
    return _nested(values)


def read_demo(demo, name: str, path: Path, model_files: dict[str, int],
              require_obs: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """``(episode, entry)``: the demo's arrays by store key, and its ``source["demos"]`` entry.
    ``model_files`` (text -> index) collects the distinct ``model_file`` texts."""
    where = where_of(path, demo)
    with reading(where):
        tops = set(demo.keys())
    if "actions" not in tops or (require_obs and "obs" not in tops):
        hint = " (a raw robosuite demo.hdf5? format=robosuite reads it)" if "states" in tops and "obs" not in tops \
            else ""
        raise StoreError(f"{where} lacks 'actions' or 'obs' (has {sorted(tops)[:20]}){hint}")
    actions = member(demo, "actions", path, h5py.Dataset)
    datasets = _datasets(demo, path)
    with reading(where_of(path, actions)):
        length = actions.shape[0] if actions.ndim else 0
    samples = attr(demo, "num_samples", where)
    if samples is not None and check_int(where, "num_samples", samples, 0, LIMITS["frames"]) != length:
        raise StoreError(f"{where}: 'num_samples' is {samples} but 'actions' has {length} steps")
    episode, budget = {}, EpisodeBudget(where)
    for key, ds in datasets.items():
        values = read_steps(ds, where_of(path, ds), length, budget)
        episode[key] = values[:, None] if values.ndim == 1 and key not in ("reward", "done") else values
    attrs, dropped = scalar_attrs(demo, where, skip=("model_file",))
    entry: dict = {"name": name, "attrs": attrs}
    if dropped:
        entry["dropped_attrs"] = dropped
    text = text_attr(demo, "model_file", where, MAX_MODEL_CHARS)
    if text is not None:
        entry["model_file"] = model_files.setdefault(text, len(model_files))
    if "initial_state" in tops:
        entry["initial_state"] = _initial_state(demo, path)
    return episode, entry


def _mask(f, path: Path) -> dict[str, list[str]]:
    if "mask" not in f:
        return {}
    masks, group = {}, member(f, "mask", path, h5py.Group)
    for key in group:
        ds = member(group, key, path, h5py.Dataset)
        where = f"{path}: mask/{key}"
        if (ds.dtype.kind not in "SOU" or ds.ndim != 1 or ds.shape[0] > LIMITS["episodes"]
                or ds.dtype.kind != "O" and ds.dtype.itemsize > MAX_NAME_BYTES):
            raise StoreError(f"{where}: expected a list of demo names (strings of at most "
                             f"{MAX_NAME_BYTES} bytes), got {ds.dtype} {ds.shape}")
        if ds.dtype.kind == "O":     # variable-length: each read alone (all may point at one long string)
            names = []
            with reading(where):
                for i in range(ds.shape[0]):
                    names.append(ds[i])
                    if not isinstance(names[-1], (bytes, str)) or len(names[-1]) > MAX_NAME_BYTES:
                        raise StoreError(f"{where}: entry {i} is not a demo name of at most {MAX_NAME_BYTES} bytes")
        else:
            names = bounded_read(ds, where)
        masks[key] = sorted(n.decode("utf-8", errors="replace") if isinstance(n, bytes) else str(n) for n in names)
    return masks


def import_robomimic(hdf5: str | os.PathLike, out: str | os.PathLike, fps: float = DEFAULT_FPS,
                     overwrite: bool = False, progress: bool = True,
                     episodes: list[int] | None = None) -> EpisodeStore:
    """Import ``hdf5`` (robomimic / Isaac Lab layout) into a new store at ``out``;
    ``episodes`` picks demos by number (``demo_N``)."""
    hdf5, out = Path(hdf5), Path(out)
    wanted = episodes_option(episodes)
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    with open_file(hdf5) as f, reading(str(hdf5)):     # what a corrupt file breaks outside the named objects
        if "data" not in f:
            raise StoreError(f"{hdf5}: no 'data' group: not a robomimic dataset")
        data = member(f, "data", hdf5, h5py.Group)
        names = demo_names(data, hdf5, wanted)
        source = {"format": "robomimic", "file": str(hdf5.resolve()), "masks": _mask(f, hdf5),
                  "env_args": json_attr(data, "env_args", f"{hdf5}: data"),
                  "data_attrs": scalar_attrs(data, f"{hdf5}: data", skip=("env_args",))[0]}
        demos, model_files = [], {}
        what = "demos' attributes, initial_state and model_file"
        budget = SourceBudget(hdf5, what, base=source)
        with staged_store(out, fps) as store:
            for name in tqdm(names, desc=f"import {hdf5.name}", disable=not progress):
                demo = member(data, name, hdf5, h5py.Group)
                episode, entry = read_demo(demo, name, hdf5, model_files)
                budget.add(entry, model_files)
                store.append_episode(episode, source=where_of(hdf5, demo))
                demos.append(entry)
            source.update(demos=demos, model_files=list(model_files))
            store.set_source(check_source(source, hdf5, what))
    return EpisodeStore.open(out)
