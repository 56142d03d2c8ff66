"""Cheap offscreen camera images of robosuite scenes, live or from saved simulator states.

Both the environments' camera observations (:mod:`cadence.envs.robosuite_tasks`) and the
images rendered afterwards from recorded ``sim_state`` go through :class:`CameraRenderer`, so
an image rendered from a state equals the one the environment showed at that step.

Rendering is made cheap for software OpenGL: no multisampling (``offsamples = 0`` on the
model, set before the GL context is made) and no reflections (about 3x faster than
robosuite's own offscreen renderer at 84x84). Collision geoms (group 0) are hidden as in
robosuite's renderer. Images are returned right side up (row 0 at the top); robosuite's own
``sim.render`` returns them upside down.

:class:`StateRenderer` renders the camera keys of whole episodes from their ``sim_state``,
for ``cadence collect`` of an image task: low-dimensional episodes are collected fast and
their images rendered afterwards.
"""
from __future__ import annotations

import atexit
import weakref
from typing import Mapping, Sequence

import mujoco
import numpy as np

IMAGE_SUFFIX = "_image"
RENDER_KWARGS = ("cameras", "image_size", "render_mode", "render_size")


def image_key(camera: str) -> str:
    """robomimic's observation key for a camera: ``agentview`` -> ``agentview_image``."""
    return camera + IMAGE_SUFFIX


class CameraRenderer:
    """Renders named cameras of one MuJoCo model at ``height`` x ``width`` (uint8 RGB)."""

    def __init__(self, model: mujoco.MjModel, height: int, width: int | None = None):
        width = height if width is None else width
        model.vis.quality.offsamples = 0          # no MSAA; must precede the GL context
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.model = model
        self._renderer = mujoco.Renderer(model, height, width)
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        # free the GL context when garbage collected or, at the latest, at exit before mujoco's
        # EGL teardown (registered when its first context was made; atexit runs last-in first)
        self._close = weakref.finalize(self, self._renderer.close)
        self._close.atexit = False
        atexit.register(self._close)
        self._option = mujoco.MjvOption()
        self._option.geomgroup[:] = (0, 1, 1, 0, 0, 0)   # as robosuite: collision geoms hidden
        self._option.sitegroup[:] = (1, 1, 1, 0, 0, 0)

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """The camera's current view of ``data`` (whose kinematics must be up to date)."""
        self._renderer.update_scene(data, camera=camera, scene_option=self._option)
        return self._renderer.render().copy()

    def close(self) -> None:
        self._close()
        atexit.unregister(self._close)


def split_render_kwargs(env_kwargs: Mapping | None) -> tuple[dict, list[str], int]:
    """``(kwargs without the rendering options, cameras, image_size)``."""
    env_kwargs = dict(env_kwargs or {})
    cameras = list(env_kwargs.get("cameras") or [])
    size = int(env_kwargs.get("image_size") or 84)
    return {k: v for k, v in env_kwargs.items() if k not in RENDER_KWARGS}, cameras, size


class StateRenderer:
    """Renders ``{camera}_image`` for a sequence of flattened simulator states.

    ``env_id`` and ``env_kwargs`` are those of the task (``cameras`` and ``image_size`` say
    what to render); the scene is rebuilt from the same environment without cameras.
    """

    def __init__(self, env_id: str, env_kwargs: Mapping | None = None,
                 cameras: Sequence[str] | None = None, image_size: int | None = None):
        import gymnasium as gym

        import cadence.envs  # noqa: F401  (registers the tasks)

        base_kwargs, default_cameras, default_size = split_render_kwargs(env_kwargs)
        self.cameras = list(cameras if cameras is not None else default_cameras)
        if not self.cameras:
            raise ValueError("no cameras to render (env_kwargs has no 'cameras')")
        self.image_size = int(image_size or default_size)
        self._env = gym.make(env_id, **base_kwargs)
        self._env.reset(seed=0)     # a reset hides robosuite's visualisation sites, as live
        self._renderer = CameraRenderer(self._env.unwrapped.mj_model, self.image_size)

    def render(self, sim_states: np.ndarray) -> dict[str, np.ndarray]:
        """``{image_key(camera): (T, S, S, 3) uint8}`` for ``sim_states`` of shape (T, D)."""
        env = self._env.unwrapped
        sim_states = np.asarray(sim_states, dtype=np.float64)
        out = {image_key(c): np.empty((len(sim_states), self.image_size, self.image_size, 3), np.uint8)
               for c in self.cameras}
        for t, state in enumerate(sim_states):
            env.set_sim_state(state)
            for camera in self.cameras:
                out[image_key(camera)][t] = self._renderer.render(env.mj_data, camera)
        return out

    def close(self) -> None:
        self._renderer.close()
        self._env.close()

    def __enter__(self) -> "StateRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
