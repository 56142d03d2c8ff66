"""Import the processes cadence ships, so each registers itself (see :mod:`.base`)."""
from . import ddpm, edm, rectified_flow, regression, shortcut, streaming, truncated_anchor  # noqa: F401
