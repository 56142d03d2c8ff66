import os
import subprocess
import sys


def test_rendering_is_available_here_and_a_bad_backend_is_reported():
    from cadence.envs.rendering import rendering_problem

    assert rendering_problem() is None    # CI installs EGL (.ci/run); the image tests need it
    code = "from cadence.envs.rendering import rendering_problem as p; r = p(); print(r); assert r and 'MUJOCO_GL' in r"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MUJOCO_GL": "nosuchbackend"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
