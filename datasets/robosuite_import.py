"""Import a raw robosuite ``demo.hdf5`` into an episode store, optionally regenerating observations.

``cadence import format=robosuite source=demo.hdf5 out=X.zarr [replay=true cameras=[agentview]
image_size=[84,84]] [episodes=[N, ...]] [fps=F]`` calls :func:`import_robosuite`.

Layout (robosuite's ``DataCollectionWrapper`` + ``gather_demonstrations_as_hdf5`` in
``scripts/collect_human_demonstrations.py``): ``data`` with attributes ``date``, ``time``,
``repository_version``, ``env`` (the environment's name, e.g. ``Lift``) and ``env_info`` (a JSON
string of the ``robosuite.make`` arguments: ``env_name``, ``robots``, ``controller_configs``,
...); one group per demonstration, ``demo_1, demo_2, ...``, with the attribute ``model_file``
(the scene's MJCF XML) and the datasets ``states`` (T, Ds: flattened MuJoCo states ``[time,
qpos, qvel]``, ``states[t]`` the state *before* ``actions[t]``) and ``actions`` (T, Da). There
is no ``obs``.

Import: each demonstration becomes one episode (numeric order) with ``action`` and
``sim_state`` (and any other dataset in the demo, named as in :mod:`.robomimic_import`, which
reads the demos). The store's ``source`` keeps ``format``, ``file``, ``env``, ``env_info``
(parsed), ``data_attrs`` (``date``, ``time``, ``repository_version``), ``demos`` (one entry per
episode, as in :mod:`.robomimic_import`: ``name``, ``attrs``, ``model_file``) and
``model_files``: each distinct scene XML once (up to ``MAX_MODEL_CHARS`` each, the whole
``source`` up to ``hdf5_checks.SOURCE_BYTES``), ``demos[i]["model_file"]`` its index.
``fps`` defaults to ``env_info["control_freq"]`` if given, else 20 (robosuite's default).

``replay=true`` regenerates the observations the way robomimic's ``dataset_states_to_obs.py``
does: one environment is built from ``env`` and ``env_info`` (no on-screen renderer, offscreen
only when cameras are asked for, ``use_camera_obs=bool(cameras)``, ``camera_names=cameras``,
``camera_heights/widths`` from ``image_size`` (used only with cameras), default 84x84,
``ignore_done``, no hard reset); for each demo ``env.reset()``,
``env.reset_from_xml_string(env.edit_model_xml(model_file))``, ``env.sim.reset()``, then for
each state ``sim.set_state_from_flattened(state)``,
``sim.forward()`` and ``env._get_observations(force_update=True)``. Every observation key
becomes a store key under robosuite's name (``robot0_eef_pos``, ``object-state``,
``robot0_proprio-state``, ``agentview_image``, ...); 1-D observations are stored ``(T, 1)``.
robosuite 1.5.2 renders with ``macros.IMAGE_CONVENTION = "opengl"``, i.e. upside down (row 0 at
the bottom); images are flipped upright, as robomimic does, when that macro is ``"opengl"``
(so they match robomimic's datasets and cadence's own robosuite tasks). The replayed
observations are what the environment computes at each saved state: positions and velocities
equal those the environment saw while recording (it observes after a forward pass), while
anything depending on the controls of the step (``robot0_joint_acc``, ``qacc``) is computed with
the controls left from the reset, as in robomimic's replay, not the recorded ones.
``source["replay"]`` records the cameras, image size, robosuite version and the ``env_info``
keys not passed on. ``MUJOCO_GL`` is set to EGL (or OSMesa) when unset.

The file is data from elsewhere. Besides the checks of :mod:`.hdf5_checks` (objects, sizes,
finite numbers, bounded metadata), for ``replay``: ``env`` must be an environment robosuite
registers (``robosuite.ALL_ENVIRONMENTS``); only ``env_info`` keys that its constructor accepts
are passed on (never the rendering, reset or placement arguments, which the importer sets);
``robots`` must be names robosuite registers, ``gripper_types`` / ``base_types`` registered or
``"default"``, every controller ``type`` a registered controller, and no ``env_info`` key may
name a file or path. Nothing named in the file is imported. ``model_file`` must be plain MJCF:
no DOCTYPE / entities, no ``<include>``, every ``file*`` attribute (after robosuite's own
rewriting of asset paths to this installation) a file inside the installed robosuite package,
at most ``MAX_XML_ELEMENTS`` elements and sizes that allocate memory (``size memory``,
``njmax``, textures, height fields, composite counts) within stated bounds. What MuJoCo's
compiler then does with a valid scene of that size is not bounded further. ``states`` must have
the width of the scene's ``[time, qpos, qvel]``. A refusal is one
:class:`~cadence.errors.CadenceError` naming the file and the object.
"""
from __future__ import annotations

import inspect
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
from tqdm.auto import tqdm

from cadence.untrusted import check_number

from .episode_store import EpisodeStore, StoreError, valid_key
from .hdf5_checks import (SourceBudget, check_source, demo_names, episodes_option, json_attr, member, open_file,
                          reading, scalar_attrs, text_attr, where_of)
from .image_resize import image_size as checked_image_size
from .robomimic_import import read_demo
from .staged_store import staged_store

DEFAULT_FPS = 20.0                 # robosuite's default control_freq
DEFAULT_IMAGE_SIZE = (84, 84)
MAX_XML_ELEMENTS = 100_000         # robosuite's Lift scene: about 600
# env_info keys the importer sets itself (rendering, resets, objects JSON cannot hold)
IMPORTER_KWARGS = frozenset({
    "has_renderer", "has_offscreen_renderer", "use_camera_obs", "camera_names", "camera_heights",
    "camera_widths", "camera_depths", "camera_segmentations", "render_camera", "render_collision_mesh",
    "render_visual_mesh", "render_gpu_device_id", "renderer", "renderer_config", "ignore_done", "hard_reset",
    "placement_initializer"})
# MJCF attributes that size an allocation: (tag, attribute) -> largest value
XML_BOUNDS = {("size", "memory"): 2 ** 31, ("size", "njmax"): 10 ** 6, ("size", "nconmax"): 10 ** 6,
              ("size", "nstack"): 10 ** 8, ("size", "nuserdata"): 10 ** 6, ("size", "nkey"): 10 ** 4,
              ("size", "nuser_body"): 1024, ("size", "nuser_jnt"): 1024, ("size", "nuser_geom"): 1024,
              ("size", "nuser_site"): 1024, ("size", "nuser_cam"): 1024, ("size", "nuser_tendon"): 1024,
              ("size", "nuser_actuator"): 1024, ("size", "nuser_sensor"): 1024,
              ("texture", "width"): 8192, ("texture", "height"): 8192,
              ("hfield", "nrow"): 8192, ("hfield", "ncol"): 8192,
              ("composite", "count"): 10 ** 5, ("flexcomp", "count"): 10 ** 5}
_SUFFIX = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40, "P": 2 ** 50, "E": 2 ** 60}


def import_robosuite(hdf5: str | os.PathLike, out: str | os.PathLike, fps: float | None = None,
                     overwrite: bool = False, replay: bool = False, cameras: Sequence[str] = (),
                     image_size: Sequence[int] | None = None, episodes: list[int] | None = None,
                     progress: bool = True) -> EpisodeStore:
    """Import a raw robosuite ``demo.hdf5``; ``replay`` regenerates observations (and images of
    ``cameras`` at ``image_size`` = [H, W]) from the saved states."""
    hdf5, out = Path(hdf5), Path(out)
    wanted, cameras = episodes_option(episodes), _cameras(cameras)
    if cameras and not replay:
        raise StoreError("cameras=[...] are rendered while replaying the states: add replay=true")
    size = checked_image_size(image_size, "image_size") or DEFAULT_IMAGE_SIZE
    if out.exists() and not overwrite:
        raise StoreError(f"{out}: already exists (overwrite=true replaces it)")
    with open_file(hdf5) as f, reading(str(hdf5)):
        if "data" not in f:
            raise StoreError(f"{hdf5}: no 'data' group: not a robosuite demo.hdf5")
        data = member(f, "data", hdf5, h5py.Group)
        where = f"{hdf5}: data"
        env_info = json_attr(data, "env_info", where)
        if env_info is not None and not isinstance(env_info, dict):
            raise StoreError(f"{where}: attribute 'env_info' must be a JSON object, got {type(env_info).__name__}")
        env_name = text_attr(data, "env", where, 256) or (env_info or {}).get("env_name")
        names = demo_names(data, hdf5, wanted)
        fps = fps or _control_freq(env_info, where) or DEFAULT_FPS
        source: dict[str, Any] = {"format": "robosuite", "file": str(hdf5.resolve()), "env": env_name,
                                  "env_info": env_info,
                                  "data_attrs": scalar_attrs(data, where, skip=("env", "env_info"))[0]}
        replayer = Replayer(hdf5, env_name, env_info, cameras, size) if replay else None
        try:
            demos, model_files = [], {}
            what = "env_info, demos' attributes and model_file"
            budget = SourceBudget(hdf5, what, base=source)
            with staged_store(out, fps) as store:
                for name in tqdm(names, desc=f"import {hdf5.name}", disable=not progress):
                    demo = member(data, name, hdf5, h5py.Group)
                    episode, entry = read_demo(demo, name, hdf5, model_files, require_obs=False)
                    if "sim_state" not in episode:
                        raise StoreError(f"{where_of(hdf5, demo)} lacks 'states' (has {sorted(demo.keys())[:20]})")
                    if replayer is not None:
                        if "model_file" not in entry:
                            raise StoreError(f"{where_of(hdf5, demo)}: no attribute 'model_file' (the scene "
                                             f"replay=true rebuilds)")
                        xml = list(model_files)[entry["model_file"]]
                        observed = replayer.observations(xml, episode["sim_state"], where_of(hdf5, demo))
                        for key in observed:
                            if key in episode:
                                raise StoreError(f"{where_of(hdf5, demo)}: the replayed observation '{key}' "
                                                 f"collides with the imported key '{key}'")
                        episode.update(observed)
                    budget.add(entry, model_files)
                    store.append_episode(episode, source=where_of(hdf5, demo))
                    demos.append(entry)
                source.update(demos=demos, model_files=list(model_files),
                              replay=replayer.summary() if replayer is not None else None)
                store.set_source(check_source(source, hdf5, what))
        finally:
            if replayer is not None:
                replayer.close()
    return EpisodeStore.open(out)


def _cameras(cameras) -> list[str]:
    if cameras is None:
        return []
    if isinstance(cameras, (str, bytes)) or not isinstance(cameras, Sequence) or len(cameras) > 64:
        raise StoreError(f"cameras must be a list of camera names, got {cameras!r}"[:300])
    bad = [c for c in cameras if not isinstance(c, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", c)]
    if bad or len(set(cameras)) != len(cameras):
        raise StoreError(f"cameras must be distinct camera names (letters, digits, _ and -), "
                         f"got {list(cameras)!r}"[:300])
    return list(cameras)


def _control_freq(env_info, where: str) -> float | None:
    value = (env_info or {}).get("control_freq")
    return None if value is None else check_number(where, "env_info.control_freq", value, 1e-3, 1e6)


# --- replay ----------------------------------------------------------------------------------
def _import_robosuite():
    """robosuite, imported quietly (``MUJOCO_GL`` chosen first)."""
    from cadence.envs.rendering import choose_gl_backend

    choose_gl_backend()
    from cadence.envs.robosuite_tasks import import_robosuite

    return import_robosuite()


def env_kwargs(suite, env_name, env_info: dict | None, where: str) -> tuple[str, dict, list[str]]:
    """``(env_name, kwargs, ignored)``: the ``robosuite.make`` arguments of ``env_info`` that the
    environment's constructor accepts and the importer does not set, checked; the names of the
    others."""
    from robosuite.environments.base import REGISTERED_ENVS

    info = dict(env_info or {})
    named = info.pop("env_name", None)
    if not isinstance(env_name, str) or env_name not in suite.ALL_ENVIRONMENTS:
        raise StoreError(f"{where}: attribute 'env' is {env_name!r}, not an environment robosuite registers "
                         f"({', '.join(sorted(suite.ALL_ENVIRONMENTS))})"[:400])
    if named is not None and named != env_name:
        raise StoreError(f"{where}: attribute 'env_info' names env_name {named!r} but 'env' is {env_name!r}"[:300])
    params = {name for name, p in inspect.signature(REGISTERED_ENVS[env_name].__init__).parameters.items()
              if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in info.items() if k in params and k not in IMPORTER_KWARGS}
    ignored = sorted(k for k in info if k not in kwargs)
    _no_paths(kwargs, where, "env_info")
    if "robots" not in kwargs:
        raise StoreError(f"{where}: attribute 'env_info' names no robots")
    _names(kwargs["robots"], set(suite.ALL_ROBOTS), "robots", where)
    from robosuite.models.bases import ALL_BASES

    for key, known in (("gripper_types", set(suite.ALL_GRIPPERS)), ("base_types", set(ALL_BASES))):
        if key in kwargs:
            _names(kwargs[key], known | {"default", None}, key, where)
    if "controller_configs" in kwargs:
        known = set(suite.ALL_COMPOSITE_CONTROLLERS) | set(suite.ALL_PART_CONTROLLERS) | {"GRIP"}
        for value in _types(kwargs["controller_configs"]):
            if value not in known:
                raise StoreError(f"{where}: env_info.controller_configs names controller type {value!r}, "
                                 f"not one robosuite registers ({', '.join(sorted(map(str, known)))})"[:400])
    return env_name, kwargs, ignored


def _names(value, known: set, key: str, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    bad = [v for v in values if not (v is None or isinstance(v, str)) or v not in known]
    if bad or not values:
        raise StoreError(f"{where}: env_info.{key} names {bad[0] if bad else value!r}, not one robosuite registers "
                         f"({', '.join(sorted(str(k) for k in known))})"[:400])


def _types(value) -> list:
    """Every value of a ``type`` key anywhere inside ``value``."""
    if isinstance(value, dict):
        found = [value["type"]] if "type" in value else []
        return found + [t for k, v in value.items() if k != "type" for t in _types(v)]
    if isinstance(value, list):
        return [t for v in value for t in _types(v)]
    return []


def _no_paths(value, where: str, name: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if re.search(r"file|path", str(key), re.IGNORECASE):
                raise StoreError(f"{where}: {name}.{key} names a file; robosuite arguments from a file may not"[:300])
            _no_paths(item, where, f"{name}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_paths(item, where, f"{name}[{i}]")


def _number(text: str, tag: str, key: str, where: str) -> int:
    """An MJCF size value: an integer, ``-1`` or (``memory``) with a K/M/G/T suffix; counts are
    products of their space-separated values."""
    total = 1
    for word in text.split() or [""]:
        match = re.fullmatch(r"(-?[0-9]{1,19})([KMGTPE]?)", word.strip())
        if not match:
            raise StoreError(f"{where}: <{tag} {key}={text!r}> is not a size"[:300])
        total *= max(int(match.group(1)), 0) * _SUFFIX[match.group(2)]
    return total


def check_raw_xml(text: str, where: str) -> None:
    """Refuse a scene XML that declares a DOCTYPE or entities (before anything parses it)."""
    if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise StoreError(f"{where}: attribute 'model_file' declares a DOCTYPE or entities, which MJCF never needs")


def check_model_xml(text: str, root_dir: str, where: str) -> None:
    """Refuse a scene XML (after robosuite's path rewriting) that includes other files, points at
    files outside ``root_dir`` (the installed robosuite package) or sizes a large allocation."""
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError) as exc:
        raise StoreError(f"{where}: attribute 'model_file' is not XML ({exc})") from None
    root_dir = os.path.realpath(root_dir)
    for count, element in enumerate(root.iter()):
        if count >= MAX_XML_ELEMENTS:
            raise StoreError(f"{where}: attribute 'model_file' holds more than {MAX_XML_ELEMENTS:,} elements")
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag == "include":
            raise StoreError(f"{where}: attribute 'model_file' includes another file ({element.get('file')!r}), "
                             f"which cadence does not follow"[:300])
        for key, value in element.attrib.items():
            if key.startswith("file"):
                real = os.path.realpath(value) if os.path.isabs(value) else None
                if real is None or os.path.commonpath([real, root_dir]) != root_dir:
                    raise StoreError(f"{where}: attribute 'model_file' points <{tag} {key}> at {value!r}, "
                                     f"outside the installed robosuite ({root_dir})"[:400])
            bound = XML_BOUNDS.get((tag, key))
            if bound is not None and _number(value, tag, key, where) > bound:
                raise StoreError(f"{where}: attribute 'model_file' sets <{tag} {key}={value!r}>, "
                                 f"more than {bound:,}"[:300])


class Replayer:
    """One robosuite environment that turns saved states into observations."""

    def __init__(self, path: Path, env_name, env_info: dict | None, cameras: list[str], size: tuple[int, int]):
        suite = self.suite = _import_robosuite()
        where = f"{path}: data"
        self.env_name, kwargs, self.ignored = env_kwargs(suite, env_name, env_info, where)
        self.cameras, self.size = cameras, size
        kwargs.update(has_renderer=False, has_offscreen_renderer=bool(cameras), use_camera_obs=bool(cameras),
                      ignore_done=True, hard_reset=False, renderer="mujoco")
        if cameras:
            kwargs.update(camera_names=list(cameras), camera_heights=size[0], camera_widths=size[1],
                          camera_depths=False)
        try:
            self.env = suite.make(self.env_name, **kwargs)
        except Exception as exc:  # noqa: BLE001 - robosuite's own checks of arguments from the file
            raise StoreError(f"{where}: robosuite cannot build {self.env_name} from attribute 'env_info' "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        known = list(self.env.sim.model.camera_names)
        missing = [c for c in cameras if c not in known]
        if missing:
            self.close()
            raise StoreError(f"cameras: {missing} are not cameras of {self.env_name} (it has {known})")
        from robosuite import macros

        self.flip = macros.IMAGE_CONVENTION == "opengl"
        self.root_dir = os.path.dirname(suite.__file__)

    def observations(self, xml: str, states: np.ndarray, where: str) -> dict[str, np.ndarray]:
        """The observations at each of ``states`` in the scene ``xml``, by key."""
        check_raw_xml(xml, where)
        env = self.env
        try:
            env.reset()
            edited = env.edit_model_xml(xml)
        except (ET.ParseError, ValueError, AttributeError) as exc:
            raise StoreError(f"{where}: attribute 'model_file' is not a robosuite scene ({exc})"[:300]) from None
        check_model_xml(edited, self.root_dir, where)
        try:
            env.reset_from_xml_string(edited)
            env.sim.reset()
        except Exception as exc:  # noqa: BLE001 - MuJoCo's compiler / robosuite on a scene from the file
            raise StoreError(f"{where}: attribute 'model_file': robosuite cannot load the scene "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        width = env.sim.get_state().flatten().size
        if states.ndim != 2 or states.shape[1] != width:
            raise StoreError(f"{where}/states: has shape {states.shape}, but the scene's [time, qpos, qvel] has "
                             f"{width} values")
        steps: dict[str, list[np.ndarray]] = {}
        for state in states:
            env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
            env.sim.forward()
            for key, value in env._get_observations(force_update=True).items():
                steps.setdefault(key, []).append(np.array(value))
        out = {}
        for key, values in steps.items():
            if not valid_key(key):
                raise StoreError(f"{where}: robosuite's observation {key!r} cannot be a store key")
            array = np.stack(values)
            if key.endswith("_image") and self.flip:
                array = np.ascontiguousarray(array[:, ::-1])
            out[key] = array[:, None] if array.ndim == 1 else array
        return out

    def summary(self) -> dict:
        return {"cameras": self.cameras, "image_size": list(self.size) if self.cameras else None,
                "robosuite_version": getattr(self.suite, "__version__", None), "ignored_env_info": self.ignored,
                "images_flipped_upright": self.flip}

    def close(self) -> None:
        env, self.env = getattr(self, "env", None), None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing a half-built environment
                pass
