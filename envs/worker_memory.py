"""Refuse more simulator worker processes than the machine's free memory holds.

An async vector env starts one worker process per episode run at once; past what the memory
holds, the kernel's out-of-memory killer ends the run (often the main process first) with no
word of why. :func:`check_worker_memory` refuses such a count before any process starts.
"""
from __future__ import annotations

from pathlib import Path

from cadence.envs.task_env import env_module
from cadence.errors import CadenceError

MB = 2**20
# Proportional set size of one worker, measured 2026-12-07 after a reset: PushT 97 MB, the reach
# task 94 MB, robosuite's Square 565 MB (660 MB with the lookahead's scratch copy). Envs of other
# modules are assumed as large as robosuite's.
WORKER_BYTES = {"cadence.envs.pusht": 150 * MB, "cadence.envs.bimodal_reach": 150 * MB}
LARGEST = 700 * MB


class WorkerMemoryError(CadenceError, ValueError):
    """More worker processes asked for than the free memory holds."""


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The kernel's MemAvailable in bytes; None where it cannot be read (not Linux)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def worker_bytes(task_cfg) -> int:
    """The memory one worker process of ``task_cfg``'s env is assumed to take."""
    return WORKER_BYTES.get(env_module(task_cfg) or "", LARGEST)


def check_worker_memory(task_cfg, workers: int, setting: str, available: int | None = None) -> None:
    """Raise WorkerMemoryError, naming ``setting`` (what set the count), if ``workers`` worker processes
    of ``task_cfg``'s env would not fit in ``available`` bytes (default :func:`available_memory`;
    unknown: no check)."""
    available = available_memory() if available is None else available
    each = worker_bytes(task_cfg)
    if available is None or workers * each <= available:
        return
    raise WorkerMemoryError(f"{setting} starts {workers} simulator worker processes for {task_cfg.name}, about "
                     f"{workers * each / 2**30:.1f} GB, more than the {available / 2**30:.1f} GB of memory "
                     f"available: run at most {max(1, available // each)} episodes at once, or without async envs")
