"""The hand-written references of benchmarks/references.py compute the library's hypergradients (float64, 1e-8).

This is what makes `bilevel bench`'s ratio_to_reference an honest comparison: both sides do the same math.
"""
import warnings

import pytest
import torch

import bilevel
from bilevel_benchmarks import bench
from tree_assert import assert_tree_close

R = bench.load_references()


pytestmark = pytest.mark.usefixtures("one_thread")


def _close(a, b, tol=1e-8):
    assert_tree_close(a, b, tol)


@pytest.fixture(scope="module")
def linear():
    p = bench.make_hyperclean("linear", 60, 40, "digits", dtype="float64")
    torch.manual_seed(0)
    p.x = 0.5 * torch.randn_like(p.x)  # non-uniform weights: a generic point
    return p


@pytest.fixture(scope="module")
def mlp():
    p = bench.make_hyperclean("mlp", 50, 30, "digits", dtype="float64", hidden=8)
    torch.manual_seed(1)
    p.x = 0.5 * torch.randn_like(p.x)
    return p


def _lib(p, method, K):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bench.library_call(p, method, K)()


def _ref(p, method, K):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bench.reference_call(R, p, method, K)()


@pytest.mark.parametrize("method", ["rhg", "trhg", "cg", "neumann", "bda", "rhg+checkpoint=3"])
def test_linear_hyperclean(linear, method):
    _close(_ref(linear, method, 7), _lib(linear, method, 7).grad)


@pytest.mark.parametrize("method", ["rhg", "trhg", "cg", "bda"])
def test_mlp_hyperclean(mlp, method):
    _close(_ref(mlp, method, 5), _lib(mlp, method, 5).grad)


def test_iaptt_gradient_and_initialization(linear):
    res = _lib(linear, "iaptt", 6)
    gx, gz, k_bar = _ref(linear, "iaptt", 6)
    assert k_bar == res.info["k_bar"]
    _close(gx, res.grad)
    _close(gz, res.grad_y0)


def test_iaptt_interior_maximizer():
    """A k_bar strictly inside the trajectory (F increases, then decreases)."""
    def upper(x, y):
        return -(y[0] - 1.0) ** 2 + x[0] * y[1]

    def lower(x, y):
        return 0.5 * ((y[0] - 2.0 * x[0]) ** 2 + y[1] ** 2)

    p = bench.Prob("t", upper, lower, torch.tensor([1.0], dtype=torch.float64),
                   torch.tensor([0.0, 0.3], dtype=torch.float64), 0.3, "")
    res = _lib(p, "iaptt", 12)
    gx, gz, k_bar = _ref(p, "iaptt", 12)
    assert 1 < k_bar < 12 and k_bar == res.info["k_bar"]
    _close(gx, res.grad)
    _close(gz, res.grad_y0)


def test_fhg_scalar_hyperparameter():
    p = bench.make_hyperclean_wd(50, 30, "digits", dtype="float64")
    _close(_ref(p, "fhg", 5), _lib(p, "fhg", 5).grad)
    _close(_ref(p, "fhg", 5), _lib(p, "rhg", 5).grad)


@pytest.mark.parametrize("method", ["rhg", "trhg", "neumann", "bda", "fhg"])
def test_toy(method):
    p = bench.make_toy()
    _close(_ref(p, method, 9), _lib(p, method, 9).grad)


def test_toy_iaptt():
    p = bench.make_toy()
    res = _lib(p, "iaptt", 9)
    gx, gz, k_bar = _ref(p, "iaptt", 9)
    assert k_bar == res.info["k_bar"]
    _close(gx, res.grad)
    _close(gz, res.grad_y0)


def test_inner_loop_matches_the_library_unroll(linear):
    y = R.inner_loop(linear.lower, linear.x, linear.y0, 7, linear.lr)
    res = _lib(linear, "rhg", 7)
    _close(y, res.y)


def test_fewshot_per_task_loop_matches_vmap():
    from bilevel.app.tasks import fewshot

    p = bench.make_fewshot(meta_batch=3, width=4, queries=2, image_size=16, dtype="float64", max_per_class=40)
    sx, sy, qx, qy = p.extra["tensors"]
    ref = R.fewshot_rhg_per_task(fewshot.backbone, fewshot.task_loss, p.x, p.y0, sx, sy, qx, qy, 3, p.lr)
    _close(ref, _lib(p, "rhg", 3).grad)
