"""Is offscreen MuJoCo rendering available here? (EGL or OSMesa, picked by ``MUJOCO_GL``.)"""
from __future__ import annotations

import ctypes.util
import functools
import os


def choose_gl_backend() -> str | None:
    """Set ``MUJOCO_GL`` (before mujoco is imported) to EGL or OSMesa when their library is
    installed and the user has not chosen; returns the backend in force (None: mujoco's default)."""
    if "MUJOCO_GL" not in os.environ:
        for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
            if ctypes.util.find_library(library):
                os.environ["MUJOCO_GL"] = backend
                break
    return os.environ.get("MUJOCO_GL")


@functools.lru_cache(maxsize=1)
def rendering_problem() -> str | None:
    """``None`` if a tiny scene renders, else a one-line reason and how to fix it."""
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='.1'/></worldbody></mujoco>")
        renderer = mujoco.Renderer(model, 8, 8)
        try:
            renderer.update_scene(mujoco.MjData(model))
            renderer.render()
        finally:
            renderer.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot render"
        return (f"offscreen rendering is unavailable ({type(exc).__name__}: {exc}); install EGL/Mesa "
                f"(Debian: apt-get install libegl1 libgl1-mesa-dri) or set MUJOCO_GL=osmesa")
    return None
