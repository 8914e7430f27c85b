"""The torch side of the JAX timing comparison (benchmarks/stochastic/jax/our_step.py): the two layouts of the factored
quadratic are one function.

``quadratic_factored`` keeps the six per-sample factor arrays apart; ``quadratic_stacked`` stores them as one
(n, 600) table cut into column blocks. Both must give the same objective (values and gradients, on a batch and on all
samples), or the time per step of the two rows would not compare the same work.
"""
import importlib.util
import os
import sys

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "stochastic", "jax")


@pytest.fixture(scope="module")
def our_step():
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("bilevel_test_our_step", os.path.join(HERE, "our_step.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


def test_stacked_table_holds_the_factors_side_by_side(our_step):
    pd = our_step.problem_data
    factors, stacked = pd.quadratic(dense=False), pd.quadratic_stacked()
    d = pd.QUADRATIC["dim_inner"]
    for side in ("inner", "outer"):
        table = stacked[side]
        assert table.shape == (pd.QUADRATIC[f"n_{side}"], 6 * d) and table.flags["C_CONTIGUOUS"]
        for k, name in enumerate(pd.STACKED):
            assert (table[:, k * d:(k + 1) * d] == factors[side][name]).all()


@pytest.mark.parametrize("which", ["upper", "lower"])
def test_stacked_and_factored_objectives_agree(our_step, which):
    a, b = our_step.quadratic_factored_problem(), our_step.quadratic_stacked_problem()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(100, generator=g), torch.randn(100, generator=g)
    for idx in (torch.randperm(1024, generator=g)[:64], None):
        (xa, ya), (xb, yb) = [(x.clone().requires_grad_(), y.clone().requires_grad_()) for _ in range(2)]
        fa, fb = a[which](xa, ya, idx), b[which](xb, yb, idx)
        torch.testing.assert_close(fb, fa, rtol=1e-6, atol=1e-6)
        ga, gb = torch.autograd.grad(fa, (xa, ya)), torch.autograd.grad(fb, (xb, yb))
        for u, v in zip(gb, ga):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
