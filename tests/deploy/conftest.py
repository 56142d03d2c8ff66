import pytest
import torch

from .onnx_cases import CASES, exported


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: OpenMP threads only wait for each other. Inference
    workers set torch's (process-wide) thread count too; later modules get it back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    return exported(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    return exported("ddpm", tmp_path_factory)
