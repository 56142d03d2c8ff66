import pytest
import torch


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Inference workers set torch's (process-wide) thread count; later tests get it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
