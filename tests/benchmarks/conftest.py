import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny problems: one torch thread avoids OpenMP barrier stalls on a busy machine (``pytestmark =
    pytest.mark.usefixtures("one_thread")`` in a module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
