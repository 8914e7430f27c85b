"""bilevel.problems: every stated solution checked by numbers (autograd, central finite differences, grid
search), not by restating the formulas; the two layouts of the LLC problem agree; bad input raises."""
import math

import pytest
import torch

from bilevel.problems import (bda_counterexample, iaptt_toy, ift_closed_form, llc, llc_problem, make_quadratic,
                              make_simple_quadratic)

D = torch.float64


def grad_y(f, x, y):
    y = y.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x, y), y)
    return g


def central_fd(phi, x, h=1e-5):
    out = torch.empty_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = h
        out[i] = (phi(x + e) - phi(x - e)) / (2 * h)
    return out


# ----------------------------------------------------------------------------- quadratic
@pytest.mark.parametrize("n_x,n_y,seed", [(3, 4, 0), (1, 6, 1), (5, 2, 2)])
def test_quadratic_ift_closed_form_matches_finite_differences(n_x, n_y, seed):
    q = make_quadratic(n_x, n_y, seed)

    def y_star(x):  # the lower minimizer, found by Newton on the autograd gradient (f is quadratic: one step)
        y = torch.zeros(n_y, dtype=D)
        return y - torch.linalg.solve(q["H"], grad_y(q["lower"], x, y))

    x = q["x"]
    assert float(grad_y(q["lower"], x, y_star(x)).abs().max()) < 1e-12
    fd = central_fd(lambda v: q["upper"](v, y_star(v)), x)
    assert torch.allclose(ift_closed_form(q), fd, rtol=1e-7, atol=1e-9)
    assert q["lr"] == pytest.approx(1.0 / float(torch.linalg.eigvalsh(q["H"]).max()))
    assert float(torch.linalg.eigvalsh(q["H"]).min()) >= 0.5 - 1e-12  # 1/2-strongly convex follower


def test_simple_quadratic_gradient_and_minimizer():
    upper, lower, exact_grad, x_star, lr = make_simple_quadratic(3, 7, seed=4)
    H = torch.autograd.functional.hessian(lambda y: lower(torch.zeros(3, dtype=D), y), torch.zeros(7, dtype=D))

    def phi(x):
        y0 = torch.zeros(7, dtype=D)
        return upper(x, y0 - torch.linalg.solve(H, grad_y(lower, x, y0)))

    x = torch.tensor([0.3, -1.2, 0.7], dtype=D)
    assert torch.allclose(exact_grad(x), central_fd(phi, x), rtol=1e-7, atol=1e-9)
    assert float(exact_grad(x_star).abs().max()) < 1e-10  # phi is strongly convex: x* is its minimizer
    for i in range(3):
        e = torch.zeros(3, dtype=D)
        e[i] = 1e-3
        assert phi(x_star + e) > phi(x_star) and phi(x_star - e) > phi(x_star)
    assert lr == pytest.approx(1.0 / float(torch.linalg.eigvalsh(H).max()))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_quadratic_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="n_x must be an integer >= 1"):
        make_quadratic(bad, 3, 0)
    with pytest.raises(ValueError, match="n_y must be an integer >= 1"):
        make_simple_quadratic(2, bad)


# ----------------------------------------------------------------------------- BDA Eq. 5
def test_bda_counterexample_solution():
    p = bda_counterexample
    x_star = torch.tensor([p.X_STAR], dtype=D)
    y_star = torch.tensor(p.Y_STAR, dtype=D)
    assert float(grad_y(p.lower, x_star, y_star).abs().max()) == 0.0  # y* solves the lower level
    assert float(p.upper(x_star, y_star)) == p.F_STAR == 0.0  # and F >= 0 everywhere: a global solution

    # optimistic reduced objective: phi(x) = min of F over the lower solution set, by grid search over y
    t = torch.linspace(-3.0, 3.0, 601, dtype=D)
    Y1, Y2 = torch.meshgrid(t, t, indexing="ij")

    def phi(x):
        f = 0.5 * Y1 ** 2 - x * Y1  # the lower objective on the grid
        sol = f <= f.min() + 1e-12
        F = 0.5 * (x - Y2) ** 2 + 0.5 * (Y1 - 1.0) ** 2
        return float(F[sol].min()), float(f.min())

    xs = [round(-1.0 + 0.05 * i, 2) for i in range(61)]
    values = [phi(x)[0] for x in xs]
    assert xs[values.index(min(values))] == p.X_STAR
    assert (phi(1.01)[0] - phi(0.99)[0]) / 0.02 == pytest.approx(0.0, abs=1e-9)
    for x in (-0.7, 0.0, 1.0, 1.3):  # f*(x) against the grid minimum (the grid holds y1 = x)
        assert phi(x)[1] == pytest.approx(p.lower_value(x), abs=1e-12)
    assert p.X_BOUNDS[0] <= p.X0 <= p.X_BOUNDS[1] and len(p.Y0) == 2


def test_bda_counterexample_lower_level_is_singular():
    """The Hessian in y is diag(1, 0): [y]_2 is free, the reason RHG stalls."""
    x = torch.tensor([0.4], dtype=D)
    H = torch.autograd.functional.hessian(lambda y: bda_counterexample.lower(x, y), torch.tensor([0.3, 2.0], dtype=D))
    assert torch.equal(H, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=D))


# ----------------------------------------------------------------------------- IAPTT-GM Eq. 10
def test_iaptt_toy_solution_by_grid_search():
    p = iaptt_toy
    xs = torch.linspace(p.X_BOUNDS[0], p.X_BOUNDS[1], 1801, dtype=D)  # step 0.005
    ys = torch.linspace(p.Y_BOUNDS[0], p.Y_BOUNDS[1], 4001, dtype=D)  # step 0.001
    X, Y = torch.meshgrid(xs, ys, indexing="ij")
    f = -torch.sin(X * Y)
    fmin = f.min(dim=1).values
    assert float((fmin - p.lower_value(1.0)).abs().max()) < 1e-5  # f*(x) = -1 on the whole box
    F = torch.where(f <= fmin[:, None] + 1e-5, X + X * Y, torch.full_like(f, math.inf))
    phi = F.min(dim=1).values  # optimistic reduced objective
    i = int(phi.argmin())
    assert abs(float(xs[i]) - p.X_STAR) < 0.01 and abs(float(phi[i]) - p.F_STAR) < 0.02
    # the runner-up local solution 7 pi / 4 is clearly worse: x* is the unique global solution
    assert float(phi[(xs - 7 * math.pi / 4).abs() < 0.1].min()) > p.F_STAR + 2.0


def test_iaptt_toy_solution_is_stationary_and_attains_values():
    p = iaptt_toy
    x = torch.tensor([p.X_STAR], dtype=D)
    y = torch.tensor([p.Y_STAR], dtype=D)
    assert abs(float(grad_y(p.lower, x, y))) < 1e-12  # y* = -2 is a stationary point of f(x*, .) on the boundary
    assert float(p.lower(x, y)) == pytest.approx(p.lower_value(p.X_STAR), abs=1e-14)
    assert float(p.upper(x, y)) == pytest.approx(p.F_STAR, abs=1e-14)
    for x0, y0 in p.INITS:
        assert p.X_BOUNDS[0] <= x0 <= p.X_BOUNDS[1] and p.Y_BOUNDS[0] <= y0 <= p.Y_BOUNDS[1]


# ----------------------------------------------------------------------------- IAPTT-GM Eq. 13 (LLC)
@pytest.mark.parametrize("layout", ["stacked", "dict"])
def test_llc_solution_is_stationary(layout):
    n = 6
    upper, lower = llc_problem(n, layout)
    e = torch.full((n,), llc.X_STAR, dtype=D)  # x* = y1* = y2* = e
    x = (e * 1.0).requires_grad_()
    y1, y2 = e.clone().requires_grad_(), e.clone().requires_grad_()
    y = torch.cat([y1, y2]) if layout == "stacked" else {"y1": y1, "y2": y2}
    g1, g2 = torch.autograd.grad(lower(x, y), (y1, y2), allow_unused=True)
    assert float(g1.abs().max()) == 0.0  # y* solves the lower level
    assert g2 is None or float(g2.abs().max()) == 0.0  # y2 does not enter f: it is free
    assert float(upper(x, y).detach()) == 0.0  # F >= 0: global
    gx, gy1, gy2 = torch.autograd.grad(upper(x, y), (x, y1, y2))
    assert max(float(g.abs().max()) for g in (gx, gy1, gy2)) == 0.0
    # F grows away from the solution along the lower solution set (x, y1 = x, y2 = t)
    for d in (1e-2, -1e-2):
        xs = e + d
        yd = torch.cat([xs, e]) if layout == "stacked" else {"y1": xs, "y2": e}
        assert float(upper(xs, yd)) > 0.0


def test_llc_layouts_agree_bitwise():
    n = 5
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(n, generator=g, dtype=D), torch.randn(2 * n, generator=g, dtype=D)
    us, ls = llc_problem(n, "stacked")
    ud, ld = llc_problem(n, "dict")
    yd = {"y1": y[:n], "y2": y[n:]}
    assert torch.equal(us(x, y), ud(x, yd)) and torch.equal(ls(x, y), ld(x, yd))


def test_llc_rejects_bad_input():
    with pytest.raises(ValueError, match="n must be >= 1"):
        llc_problem(0)
    with pytest.raises(ValueError, match="layout must be one of"):
        llc_problem(3, "flat")
