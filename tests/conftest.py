import pytest

from quadratic_problems import make_quadratic


@pytest.fixture
def quadratic():
    """The factory ``make_quadratic(n_x, n_y, seed, dtype=torch.float64)``."""
    return make_quadratic
