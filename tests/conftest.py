import os

import pytest
import torch

from quadratic_problems import make_quadratic

# BILEVEL_TEST_THREADS=N runs the suite with torch.set_num_threads(N); `make test-matrix` runs it with 1 and 2
# threads and with ATEN_CPU_CAPABILITY=avx2 and default (the tests must not depend on one machine's last bits)
if os.environ.get("BILEVEL_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["BILEVEL_TEST_THREADS"]))


@pytest.fixture
def quadratic():
    """The factory ``make_quadratic(n_x, n_y, seed, dtype=torch.float64)``."""
    return make_quadratic
