import atexit
import os
import shutil
import tempfile

import pytest
import torch

from bilevel.problems import make_quadratic

# BILEVEL_TEST_THREADS=N runs the suite with torch.set_num_threads(N); `make test-matrix` runs it with 1 and 2
# threads and with ATEN_CPU_CAPABILITY=avx2 and default (the tests must not depend on one machine's last bits).
# Under pytest-xdist (`make test` runs two workers) each worker takes one thread unless told otherwise, so
# the workers do not oversubscribe the cores.
if os.environ.get("BILEVEL_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["BILEVEL_TEST_THREADS"]))
elif os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# torch.compile keeps compiled kernels in one on-disk cache per user (/tmp/torchinductor_<user>), whose key does not
# tell apart kernels built under different ATEN_CPU_CAPABILITY settings: after a run under avx2, the default kernel
# loaded from that cache returned inf or corrupted the heap ("corrupted size vs. prev_size"), with a fresh cache
# every setting is right. The suite (and the CLI subprocesses it starts) compiles into a cache of its own.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _inductor_cache = tempfile.mkdtemp(prefix="bilevel-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _inductor_cache
    atexit.register(shutil.rmtree, _inductor_cache, ignore_errors=True)


#: set to 1 to keep CUDA visible to the whole suite (by default only `pytest -m gpu` sees it)
KEEP_CUDA_ENV = "BILEVEL_TEST_CUDA"


def _selects_gpu_tests(markexpr: str) -> bool:
    """Whether a `-m` expression asks for the gpu tests (`-m gpu`, `-m "gpu or slow"`; not `-m "not gpu"`)."""
    words = markexpr.replace("(", " ").replace(")", " ").split()
    return any(w == "gpu" and (i == 0 or words[i - 1] != "not") for i, w in enumerate(words))


def pytest_configure(config):
    # The suite's reference is the CPU: `bilevel run` and friends default to --device auto, so on a machine with a
    # GPU the CPU tests (bitwise resume comparisons, reproduce smoke numbers, ...) would silently move to it. Unless
    # the gpu tests are selected (`pytest -m gpu`, tests/app/test_gpu.py) or BILEVEL_TEST_CUDA=1, CUDA is hidden from
    # this process and the CLI subprocesses it starts -- before anything initializes CUDA (is_available() reads
    # CUDA_VISIBLE_DEVICES once). The gpu tests then skip, saying so.
    if os.environ.get(KEEP_CUDA_ENV) == "1" or _selects_gpu_tests(config.getoption("markexpr", "") or ""):
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["BILEVEL_TEST_CUDA_HIDDEN"] = "1"


@pytest.fixture
def quadratic():
    """The factory ``make_quadratic(n_x, n_y, seed, dtype=torch.float64)``."""
    return make_quadratic
