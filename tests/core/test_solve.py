"""bilevel.solve: convergence to known optima, bounds, optimizers, warm start, no mutation."""
import pytest
import torch

import bilevel
from bilevel.problems import make_quadratic


def phi_star(q):
    """argmin_x phi(x) for the quadratic family (phi is quadratic in x): solve grad phi = 0."""
    H, B, c, a, E, lam = q["H"], q["B"], q["c"], q["a"], q["E"], q["lam"]
    Hi = torch.linalg.inv(H)
    S = Hi @ B                     # y*(x) = S x + Hi c
    y0 = Hi @ c
    # phi(x) = 1/2||Sx + y0 - a||^2 + lam/2||x||^2 + x'E(Sx + y0)
    M = S.T @ S + lam * torch.eye(S.shape[1], dtype=H.dtype) + E @ S + S.T @ E.T
    rhs = -(S.T @ (y0 - a) + E @ y0)
    return torch.linalg.solve(M, rhs)


@pytest.mark.parametrize("method", ["cg", "rhg"])
def test_solve_reaches_the_closed_form_optimum(method):
    q = make_quadratic(3, 4, 21)
    q["E"] = q["E"] * 0  # keep phi convex
    a, lam = q["a"], q["lam"]
    q["upper"] = lambda x, y: 0.5 * ((y - a) ** 2).sum() + 0.5 * lam * (x ** 2).sum()
    xs = phi_star(q)
    out = bilevel.solve(q["upper"], q["lower"], torch.zeros(3, dtype=torch.float64), q["y0"], method=method,
                        outer_steps=200, outer_lr=0.05, inner_steps=60, inner_lr=q["lr"])
    assert torch.allclose(out.x, xs, atol=1e-3)
    assert len(out.history) == 200
    assert out.history[-1]["upper"] <= out.history[0]["upper"]
    y = q["y0"].clone()  # out.y is the method's iterate y_K at the final x
    for _ in range(60):
        y = y - q["lr"] * (q["H"] @ y - q["B"] @ out.x - q["c"])
    assert torch.allclose(out.y, y, atol=1e-12)
    assert out.info["upper_final"] == pytest.approx(float(q["upper"](out.x, out.y)), rel=1e-10)


def test_sgd_and_optimizer_class_give_the_same_path():
    q = make_quadratic(2, 3, 22)
    kw = dict(method="rhg", outer_steps=20, outer_lr=0.1, inner_steps=30, inner_lr=q["lr"])
    a = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], outer_optimizer="sgd", **kw)
    b = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], outer_optimizer=torch.optim.SGD, **kw)
    assert torch.equal(a.x, b.x)
    # plain gradient descent by hand
    x = q["x"].clone()
    for _ in range(20):
        x = x - 0.1 * bilevel.hypergrad(q["upper"], q["lower"], x, q["y0"], method="rhg", inner_steps=30,
                                        inner_lr=q["lr"]).grad
    assert torch.allclose(a.x, x, rtol=1e-12, atol=1e-12)


def test_x_bounds_projection_hits_the_constrained_optimum():
    """phi is minimised at x* outside the box; the projected iterates stop on the nearest face."""
    up = lambda x, y: ((y - 3.0) ** 2).sum()
    lo = lambda x, y: ((y - x) ** 2).sum()   # y*(x) = x, phi(x) = ||x - 3||^2
    out = bilevel.solve(up, lo, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                        method="cg", outer_steps=200, outer_lr=0.1, inner_steps=50, inner_lr=0.4,
                        x_bounds=(-1.0, torch.tensor([1.0, 5.0], dtype=torch.float64)))
    assert torch.allclose(out.x, torch.tensor([1.0, 3.0], dtype=torch.float64), atol=1e-3)
    assert float(out.x[0]) <= 1.0


def test_projection_callable_for_x_and_y():
    up = lambda x, y: ((y - 3.0) ** 2).sum()
    lo = lambda x, y: ((y - x) ** 2).sum()
    unit_ball = lambda v: v / torch.clamp(torch.linalg.vector_norm(v), min=1.0)
    out = bilevel.solve(up, lo, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                        method="rhg", outer_steps=300, outer_lr=0.05, inner_steps=30, inner_lr=0.4,
                        x_bounds=unit_ball, y_bounds=unit_ball)
    assert float(torch.linalg.vector_norm(out.x)) <= 1.0 + 1e-12
    assert torch.allclose(out.x, torch.full((2,), 2 ** -0.5, dtype=torch.float64), atol=1e-2)


def test_dict_variables_and_no_mutation():
    x0 = {"w": torch.zeros(2, dtype=torch.float64), "b": torch.zeros((), dtype=torch.float64)}
    y0 = {"v": torch.ones(2, dtype=torch.float64)}
    snapshot = {k: v.clone() for k, v in x0.items()}
    up = lambda x, y: ((y["v"] - 1.5) ** 2).sum()
    lo = lambda x, y: ((y["v"] - x["w"] - x["b"]) ** 2).sum()
    out = bilevel.solve(up, lo, x0, y0, method="cg", outer_steps=150, outer_lr=0.05, inner_steps=40, inner_lr=0.4)
    assert set(out.x) == {"w", "b"} and out.x["b"].shape == ()
    assert torch.allclose(out.x["w"] + out.x["b"], torch.full((2,), 1.5, dtype=torch.float64), atol=1e-3)
    assert all(torch.equal(x0[k], snapshot[k]) for k in x0) and torch.equal(y0["v"], torch.ones(2, dtype=torch.float64))


def test_warm_start_continues_from_the_previous_iterate():
    """With 1 inner step per outer step, warm starting lets y track y*(x); a cold start cannot."""
    q = make_quadratic(2, 3, 23)
    kw = dict(method="rhg", outer_steps=60, outer_lr=0.02, inner_steps=1, inner_lr=q["lr"])
    warm = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], warm_start=True, **kw)
    cold = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], **kw)
    y_star = lambda x: torch.linalg.solve(q["H"], q["B"] @ x + q["c"])
    # the history's lower value is taken at the iterate the estimate used
    assert torch.linalg.vector_norm(warm.y0 - y_star(warm.x)) < 0.2 * torch.linalg.vector_norm(q["y0"] - y_star(q["x"]))
    assert torch.equal(cold.y0, q["y0"])


def test_callback_and_history_records():
    q = make_quadratic(2, 2, 24)
    seen = []
    out = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], method="neumann", outer_steps=3, outer_lr=0.1,
                        inner_steps=5, inner_lr=q["lr"], callback=lambda t, r: seen.append((t, r["upper"])))
    assert [t for t, _ in seen] == [0, 1, 2]
    assert [r["step"] for r in out.history] == [0, 1, 2]
    for r in out.history:
        assert {"upper", "lower", "grad_norm", "solver_iterations"} <= set(r)
    assert seen[0][1] == out.history[0]["upper"]


def test_zero_outer_steps_returns_the_start():
    q = make_quadratic(2, 2, 25)
    out = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], method="rhg", outer_steps=0, outer_lr=0.1,
                        inner_steps=5, inner_lr=q["lr"])
    assert torch.equal(out.x, q["x"]) and out.history == []


def test_dict_projection_keeps_the_gradient_through_the_unroll():
    """A projection callable on dict variables is differentiated like the equivalent box."""
    up = lambda x, y: ((y["u"] - 2.0) ** 2).sum() + (y["v"] ** 2).sum()
    lo = lambda x, y: ((y["u"] - x) ** 2).sum() + ((y["v"] - 2 * x) ** 2).sum()
    y0 = {"u": torch.zeros(2, dtype=torch.float64), "v": torch.zeros(2, dtype=torch.float64)}
    x = torch.tensor([0.3, -0.2], dtype=torch.float64)
    proj = lambda y: {"u": y["u"].clamp(-0.5, 0.5), "v": y["v"].clamp(-0.5, 0.5)}
    kw = dict(method="rhg", inner_steps=5, inner_lr=0.3)
    a = bilevel.hypergrad(up, lo, x, y0, y_bounds=proj, **kw)
    b = bilevel.hypergrad(up, lo, x, y0, y_bounds=(-0.5, 0.5), **kw)
    assert torch.allclose(a.grad, b.grad, rtol=1e-12) and float(a.grad.abs().max()) > 0.1


def test_init_lr_steps_the_learned_initialization_with_its_own_size():
    """One SGD step: x moves by outer_lr * grad, the learned y0 by init_lr * grad_y0 (IAPTT-GM's alpha_z)."""
    q = make_quadratic(2, 3, 23)
    kw = dict(method="iagm", outer_steps=1, outer_lr=0.1, outer_optimizer="sgd", inner_steps=10, inner_lr=q["lr"])
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="iagm", inner_steps=10,
                            inner_lr=q["lr"])
    out = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], init_lr=0.003, **kw)
    assert torch.allclose(out.x, q["x"] - 0.1 * res.grad, rtol=1e-12, atol=1e-14)
    assert torch.allclose(out.y0, q["y0"] - 0.003 * res.grad_y0, rtol=1e-12, atol=1e-14)
    same = bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], **kw)  # default: init_lr = outer_lr
    assert torch.allclose(same.y0, q["y0"] - 0.1 * res.grad_y0, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="init_lr"):
        bilevel.solve(q["upper"], q["lower"], q["x"], q["y0"], init_lr=-1.0, **kw)
