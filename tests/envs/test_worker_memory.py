"""Worker processes are refused, naming the setting, where the free memory cannot hold them."""
import pytest
from omegaconf import OmegaConf

from cadence.envs.worker_memory import (LARGEST, MB, WorkerMemoryError, available_memory, check_worker_memory,
                                        worker_bytes)


def task(name):
    return OmegaConf.load(f"configs/task/{name}.yaml")


def test_the_estimate_is_per_env_module_and_the_largest_for_robosuite():
    assert worker_bytes(task("pusht")) == worker_bytes(task("bimodal_reach")) == 150 * MB
    assert worker_bytes(task("square")) == worker_bytes(task("can_image")) == LARGEST


def test_a_count_past_the_free_memory_is_refused_naming_the_setting_and_what_fits():
    pusht = task("pusht")
    check_worker_memory(pusht, 10, "eval.batch_size=0", available=10 * 150 * MB)
    with pytest.raises(WorkerMemoryError, match=r"eval.batch_size=0 starts 11 simulator worker processes for "
                                                r"pusht.*run at most 10 episodes at once"):
        check_worker_memory(pusht, 11, "eval.batch_size=0", available=10 * 150 * MB)
    with pytest.raises(ValueError, match="run at most 1 episodes"):     # less than one worker's worth: one
        check_worker_memory(task("square"), 2, "batch_envs=2", available=LARGEST // 2)


def test_available_memory_reads_the_kernels_figure(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684264 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n")
    assert available_memory(meminfo) == 22000000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")
    assert available_memory(meminfo) is None
    assert available_memory(tmp_path / "absent") is None
