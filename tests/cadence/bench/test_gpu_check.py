"""make gpu-check: without a GPU it says what it would run and exits 0; its plan covers every GPU kind."""
import subprocess
import sys

import pytest
import torch

from cadence.bench import gpu_check
from cadence.deploy import runtimes


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run without a GPU")
@pytest.mark.parametrize("flags", [[], ["--dry-run"]])
def test_without_a_gpu_it_prints_the_plan_and_exits_0(tmp_path, flags):
    proc = subprocess.run([sys.executable, "-m", "cadence.bench.gpu_check", "--out", "gpu.json", *flags],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gpu-check: ") and ("no CUDA GPU" in lines[0] or "dry run" in lines[0])
    assert lines[1:] == [f"  - {line}" for line in gpu_check.plan()] and not (tmp_path / "gpu.json").exists()


def test_the_plan_covers_every_kind_that_needs_a_gpu():
    # torch-eager: the GPU row's own baseline
    cpu_kinds = {"torch-precond", "onnx-cpu", "onnx-cpu-precond", "onnx-cpu-int8", "onnx-cpu-loop"}
    assert set(runtimes.KINDS) - cpu_kinds == set(gpu_check.RUNTIME_KINDS)
    assert any("nccl" in line for line in gpu_check.plan()) and any("float16" in line for line in gpu_check.plan())
