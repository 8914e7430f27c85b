"""Every classical estimator against its closed form on random strongly convex quadratics (float64)."""
import pytest
import torch

import bilevel
from bilevel.problems import ift_closed_form, make_quadratic

CASES = [(3, 4, 0), (5, 2, 1), (1, 6, 2), (8, 8, 3)]


def unrolled_closed_form(q, K, T=None):
    """Gradient of F(x, y_K(x)) for y_{k+1} = (I - lr H) y_k + lr (B x + c); only the last T steps if T."""
    H, B, c, lr, x, y0 = q["H"], q["B"], q["c"], q["lr"], q["x"], q["y0"]
    n = H.shape[0]
    M = torch.eye(n, dtype=H.dtype) - lr * H
    y = y0.clone()
    for _ in range(K):
        y = M @ y + lr * (B @ x + c)
    T = K if T is None else T
    J = lr * series(M, T) @ B  # d y_K / d x
    gy = (y - q["a"]) + q["E"].T @ x
    gx = q["lam"] * x + q["E"] @ y
    return gx + J.T @ gy, y


def series(M, J):
    """sum_{j<J} M^j (zero matrix for J = 0)."""
    out = torch.zeros_like(M)
    for j in range(J):
        out = out + torch.linalg.matrix_power(M, j)
    return out


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("n_x,n_y,seed", CASES)
@pytest.mark.parametrize("K", [1, 7, 30])
@pytest.mark.parametrize("method", ["rhg", "fhg"])
def test_unrolled_methods_equal_closed_form(n_x, n_y, seed, K, method):
    q = make_quadratic(n_x, n_y, seed)
    exact, yK = unrolled_closed_form(q, K)
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method=method, inner_steps=K, inner_lr=q["lr"])
    assert rel(res.grad, exact) < 1e-8
    assert torch.allclose(res.y, yK, rtol=1e-10, atol=1e-12)
    assert res.grad_y0 is None


@pytest.mark.parametrize("n_x,n_y,seed", CASES)
def test_forward_equals_reverse_to_roundoff(n_x, n_y, seed):
    q = make_quadratic(n_x, n_y, seed)
    kw = dict(inner_steps=25, inner_lr=0.7 * q["lr"])
    r = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="rhg", **kw)
    f = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="fhg", **kw)
    assert rel(f.grad, r.grad) < 1e-12


@pytest.mark.parametrize("n_x,n_y,seed", CASES)
@pytest.mark.parametrize("K,T", [(10, 1), (10, 4), (20, 20), (6, 0)])
def test_truncated_equals_closed_form_of_last_T_steps(n_x, n_y, seed, K, T):
    q = make_quadratic(n_x, n_y, seed)
    exact, _ = unrolled_closed_form(q, K, T)
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="trhg", inner_steps=K,
                            inner_lr=q["lr"], truncate=T)
    assert rel(res.grad, exact) < 1e-8
    if T < K:  # truncation really drops terms here
        full, _ = unrolled_closed_form(q, K)
        assert rel(res.grad, full) > 1e-6


@pytest.mark.parametrize("n_x,n_y,seed", CASES)
@pytest.mark.parametrize("J", [1, 3, 15])
def test_neumann_equals_its_closed_form(n_x, n_y, seed, J):
    q = make_quadratic(n_x, n_y, seed)
    K, eta = 12, 0.8 * q["lr"]
    _, yK = unrolled_closed_form(q, K)
    H, B, x = q["H"], q["B"], q["x"]
    gy = (yK - q["a"]) + q["E"].T @ x
    M = torch.eye(H.shape[0], dtype=H.dtype) - eta * H
    v = eta * series(M, J) @ gy
    exact = q["lam"] * x + q["E"] @ yK + B.T @ v
    res = bilevel.hypergrad(q["upper"], q["lower"], x, q["y0"], method="neumann", inner_steps=K,
                            inner_lr=q["lr"], neumann_terms=J, neumann_lr=eta)
    assert rel(res.grad, exact) < 1e-10
    assert res.info["solver_iterations"] == J - 1


@pytest.mark.parametrize("n_x,n_y,seed", CASES)
@pytest.mark.parametrize("method,opts", [("cg", {}), ("rhg", {}), ("fhg", {}), ("neumann", {"neumann_terms": 600})])
def test_large_K_equals_implicit_function_theorem(n_x, n_y, seed, method, opts):
    q = make_quadratic(n_x, n_y, seed)
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method=method, inner_steps=600,
                            inner_lr=q["lr"], **opts)
    assert rel(res.grad, ift_closed_form(q)) < 1e-8


def test_cg_is_exact_at_the_given_iterate_and_reports_convergence():
    q = make_quadratic(4, 6, 7)
    K = 5  # far from y*: CG still solves the linear system at y_K exactly
    _, yK = unrolled_closed_form(q, K)
    gy = (yK - q["a"]) + q["E"].T @ q["x"]
    exact = q["lam"] * q["x"] + q["E"] @ yK + q["B"].T @ torch.linalg.solve(q["H"], gy)
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="cg", inner_steps=K, inner_lr=q["lr"])
    assert rel(res.grad, exact) < 1e-10
    assert res.info["solver_converged"] is True
    assert res.info["solver_iterations"] <= 6 + 1


def test_cg_steps_limit_warns_and_reports():
    q = make_quadratic(4, 30, 8)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="cg", inner_steps=5,
                                inner_lr=q["lr"], cg_steps=2)
    assert res.info["solver_converged"] is False and res.info["solver_iterations"] == 2


def test_float32_matches_float64_closely():
    q64 = make_quadratic(3, 5, 11)
    q32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in q64.items()}
    f32 = {k: v.float() for k, v in q64.items() if isinstance(v, torch.Tensor)}
    q32["lower"] = lambda x, y: 0.5 * y @ f32["H"] @ y - y @ (f32["B"] @ x) - f32["c"] @ y
    q32["upper"] = lambda x, y: (0.5 * ((y - f32["a"]) ** 2).sum() + 0.5 * q64["lam"] * (x ** 2).sum()
                                 + x @ f32["E"] @ y)
    r64 = bilevel.hypergrad(q64["upper"], q64["lower"], q64["x"], q64["y0"], method="rhg", inner_steps=20, inner_lr=q64["lr"])
    r32 = bilevel.hypergrad(q32["upper"], q32["lower"], q32["x"], q32["y0"], method="rhg", inner_steps=20, inner_lr=q64["lr"])
    assert r32.grad.dtype == torch.float32
    assert rel(r32.grad.double(), r64.grad) < 1e-5


@pytest.mark.parametrize("method", ["rhg", "fhg", "trhg", "cg", "neumann"])
def test_dict_structured_x_and_y(method):
    """The same quadratic written with dict variables gives the same (restructured) hypergradient."""
    q = make_quadratic(5, 6, 4)
    opts = {"truncate": 3} if method == "trhg" else {}

    def split_x(x):
        return {"a": x[:2].clone(), "b": x[2:].reshape(3, 1).clone()}

    def split_y(y):
        return {"u": y[:2].clone(), "v": y[2:].reshape(2, 2).clone()}

    cat_x = lambda d: torch.cat([d["a"], d["b"].reshape(-1)])
    cat_y = lambda d: torch.cat([d["u"], d["v"].reshape(-1)])
    up = lambda x, y: q["upper"](cat_x(x), cat_y(y))
    lo = lambda x, y: q["lower"](cat_x(x), cat_y(y))
    kw = dict(method=method, inner_steps=15, inner_lr=q["lr"], **opts)
    flat = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], **kw)
    tree = bilevel.hypergrad(up, lo, split_x(q["x"]), split_y(q["y0"]), **kw)
    assert set(tree.grad) == {"a", "b"} and tree.grad["b"].shape == (3, 1)
    assert set(tree.y) == {"u", "v"} and tree.y["v"].shape == (2, 2)
    assert rel(cat_x(tree.grad), flat.grad) < 1e-12
    assert rel(cat_y(tree.y), flat.y) < 1e-12


def test_inputs_are_not_mutated():
    q = make_quadratic(3, 3, 5)
    x, y0 = q["x"].clone(), q["y0"].clone()
    for m in ["rhg", "fhg", "trhg", "cg", "neumann"]:
        bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method=m, inner_steps=4, inner_lr=q["lr"])
    assert torch.equal(x, q["x"]) and torch.equal(y0, q["y0"])
    assert not q["x"].requires_grad and not q["y0"].requires_grad


def test_y_bounds_projects_every_iterate():
    """Projected GD: with a box that binds, the result equals a hand-written projected unroll."""
    q = make_quadratic(2, 4, 6)
    lo, hi = -0.2, 0.3
    x = q["x"].clone().requires_grad_()
    y = q["y0"].clone().clamp(lo, hi)
    y = q["y0"].clone()
    for _ in range(10):
        g = q["H"] @ y - q["B"] @ x - q["c"]
        y = torch.clamp(y - q["lr"] * g, lo, hi)
    (exact,) = torch.autograd.grad(q["upper"](x, y), x)
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="rhg", inner_steps=10,
                            inner_lr=q["lr"], y_bounds=(lo, hi))
    assert float(res.y.max()) <= hi and float(res.y.min()) >= lo
    assert rel(res.grad, exact) < 1e-10
    assert torch.allclose(res.y, y.detach())


def test_info_reports_values_and_residuals():
    q = make_quadratic(3, 4, 9)
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="rhg", inner_steps=50, inner_lr=q["lr"])
    assert res.info["upper"] == pytest.approx(float(q["upper"](q["x"], res.y)), rel=1e-12)
    assert res.info["lower"] == pytest.approx(float(q["lower"](q["x"], res.y)), rel=1e-12)
    assert res.info["lower_grad_norm_last"] < res.info["lower_grad_norm_first"]
