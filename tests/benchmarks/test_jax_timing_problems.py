"""The problems of the JAX timing comparison (benchmarks/stochastic/jax): the two layouts of the factored quadratic are
one function, on both sides.

``quadratic_factored`` keeps the six per-sample factor arrays apart; ``quadratic_stacked`` stores them as one
(n, 600) table cut into column blocks. Both must give the same objective (values and gradients, on a batch and on all
samples), or the time per step of the two rows would not compare the same work. The torch side (our_step.py) is
checked against itself and the JAX side (their_step.py, in the JAX venv; skipped without one) against the formula
written out in numpy.
"""
import importlib.util
import json
import os
import subprocess
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


def test_sliced_rows_are_the_gathered_rows_without_a_copy(our_step):
    """``--rows slice``: a contiguous batch read as a view gives the gathered batch's values and gradients (the
    datacleaning objectives, whose outer variable is sliced too, and the stacked quadratic); other batches are
    refused."""
    t = torch.arange(12.0).view(6, 2)
    idx = torch.arange(2, 5)
    view = our_step._slice_rows(t, idx)
    assert torch.equal(view, our_step._rows(t, idx)) and view.data_ptr() == t[2].data_ptr()
    assert our_step._slice_rows(t, None) is t
    with pytest.raises(ValueError, match="consecutive samples"):
        our_step._slice_rows(t, torch.tensor([1, 2, 4]))
    g = torch.Generator().manual_seed(5)
    for make, dx, dy in ((our_step.quadratic_stacked_problem, 100, 100),
                         (our_step.datacleaning_problem, 20000, 7840)):
        a, b = make(), make(rows=our_step._slice_rows)
        x, y = 0.1 * torch.randn(dx, generator=g), 0.01 * torch.randn(dy, generator=g)
        for which, start in (("upper", 128), ("lower", 896)):
            idx = torch.arange(start, start + 64)
            (xa, ya), (xb, yb) = [(x.clone().requires_grad_(), y.clone().requires_grad_()) for _ in range(2)]
            fa, fb = a[which](xa, ya, idx), b[which](xb, yb, idx)
            # the same numbers in the same layout; a view's alignment may differ from a fresh copy's, so the
            # vectorized kernels may round differently: equal to float32 round-off, not bitwise
            torch.testing.assert_close(fb, fa, rtol=1e-6, atol=1e-7)
            ga = torch.autograd.grad(fa, (xa, ya), allow_unused=True)
            gb = torch.autograd.grad(fb, (xb, yb), allow_unused=True)
            for u, v in zip(gb, ga):
                assert (u is None) == (v is None)
                if u is not None:
                    torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7)


def test_dense_quadratic_as_written_and_batch_mean_first_agree(our_step):
    """``quadratic_mean`` is ``quadratic`` (the per-sample dense formula) with the mean moved onto the matrices:
    the same values and gradients, on a batch and on all samples, upper and lower."""
    a, b = our_step.quadratic_problem(), our_step.quadratic_mean_problem()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(100, generator=g), torch.randn(100, generator=g)
    for which in ("upper", "lower"):
        for idx in (torch.randperm(1024, generator=g)[:64], None):
            (xa, ya), (xb, yb) = [(x.clone().requires_grad_(), y.clone().requires_grad_()) for _ in range(2)]
            fa, fb = a[which](xa, ya, idx), b[which](xb, yb, idx)
            torch.testing.assert_close(fb, fa, rtol=1e-5, atol=1e-5)
            for u, v in zip(torch.autograd.grad(fb, (xb, yb)), torch.autograd.grad(fa, (xa, ya))):
                torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


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


JAX_CHECK = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
import problem_data as pd, their_step as T
x = np.random.default_rng(3).standard_normal(100).astype(np.float32)
y = np.random.default_rng(4).standard_normal(100).astype(np.float32)
data, out = pd.quadratic(dense=False), {}
for layout in ("quadratic_factored", "quadratic_stacked"):
    obj = T.PROBLEMS[layout](jax, jnp)
    for side in ("inner", "outer"):
        d, rows = data[side], slice(128, 192)
        u, w, p, q, a, b = (d[k][rows].astype(np.float64) for k in "uwpqab")
        want = (0.5 * (u @ y) ** 2 + 0.5 * (w @ x) ** 2 + (p @ x) * (q @ y) + a @ y + b @ x).mean()
        gy = (u.T @ (u @ y) + q.T @ (p @ x) + a.sum(0)) / 64
        gx = (w.T @ (w @ x) + p.T @ (q @ y) + b.sum(0)) / 64
        f = obj["f_" + side]
        got = float(f(jnp.asarray(y), jnp.asarray(x), 128, 64))
        g_in, g_out = jax.grad(lambda i, o: f(i, o, 128, 64), argnums=(0, 1))(jnp.asarray(y), jnp.asarray(x))
        out[layout + "/" + side] = [abs(got - want) / abs(want), float(np.abs(np.asarray(g_in) - gy).max()),
                                    float(np.abs(np.asarray(g_out) - gx).max())]
dense = pd.quadratic()
for name in ("quadratic", "quadratic_mean"):
    obj = T.PROBLEMS[name](jax, jnp)
    for side in ("inner", "outer"):
        d, rows = dense[side], slice(128, 192)
        A, B, C, a, b = (d[k][rows].astype(np.float64) for k in "ABCab")
        want = (0.5 * np.einsum("nij,i,j->n", A, y, y) + 0.5 * np.einsum("nij,i,j->n", B, x, x)
                + np.einsum("nij,i,j->n", C, x, y) + a @ y + b @ x).mean()
        gy = (0.5 * np.einsum("nij,j->i", A, y) + 0.5 * np.einsum("nji,j->i", A, y) + np.einsum("nji,j->i", C, x)
              + a.sum(0)) / 64
        gx = (0.5 * np.einsum("nij,j->i", B, x) + 0.5 * np.einsum("nji,j->i", B, x) + np.einsum("nij,j->i", C, y)
              + b.sum(0)) / 64
        f = obj["f_" + side]
        got = float(f(jnp.asarray(y), jnp.asarray(x), 128, 64))
        g_in, g_out = jax.grad(lambda i, o: f(i, o, 128, 64), argnums=(0, 1))(jnp.asarray(y), jnp.asarray(x))
        out[name + "/" + side] = [abs(got - want) / abs(want), float(np.abs(np.asarray(g_in) - gy).max()),
                                  float(np.abs(np.asarray(g_out) - gx).max())]
print(json.dumps(out))
"""


def test_their_layouts_are_the_formula():
    """The JAX quadratics (both factored layouts, the dense one as written and batch mean first), on the inner
    variable y and the outer x in the right places: values and gradients."""
    from bilevel_benchmarks.jax_refs import group

    py, why = group.find_jax_python()
    if py is None:
        pytest.skip(f"no JAX venv ({why}); {group.HOW_TO_ENABLE}")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(HERE), JAX_PLATFORMS="cpu")
    res = subprocess.run([py, "-c", JAX_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    errors = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(errors) == 8
    for name, (value, grad_inner, grad_outer) in errors.items():
        assert value < 1e-5 and grad_inner < 1e-4 and grad_outer < 1e-4, (name, value, grad_inner, grad_outer)
