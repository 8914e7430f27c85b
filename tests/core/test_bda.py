"""BDA ("bda"): exactness against an independent brute-force unroll, identities with RHG, the proximal variant,
option validation, and BDA's counter-example (Liu et al. 2020, Eq. 5) as an executable check (float64)."""
import pytest
import torch

import bilevel
from bilevel import prox, schedules
from bilevel.problems import bda_counterexample

D = torch.float64


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# ------------------------------------------------------------------ independent reference implementation
def brute_bda(upper, lower, x, y0, K, s_l, s_u, alpha, g_prox=None, proj=None):
    """phi_K(x) = F(x, y_K(x)) for BDA Eq. 10 / supplement Eq. 13, written out with autograd; returns (grad, y_K)."""
    x = x.clone().requires_grad_()
    y = y0.clone().requires_grad_()
    for k in range(K):
        a = alpha(k + 1) if callable(alpha) else alpha
        (gF,) = torch.autograd.grad(upper(x, y), y, create_graph=True)
        (gf,) = torch.autograd.grad(lower(x, y), y, create_graph=True)
        d_F = s_u * gF
        d_f = s_l * gf if g_prox is None else y - g_prox(y - s_l * gf, s_l)
        y = y - (a * d_F + (1 - a) * d_f)
        if proj is not None:
            y = proj(y)
    (g,) = torch.autograd.grad(upper(x, y), x)
    return g, y.detach()


def nonquadratic(seed=0, n_x=3, n_y=4):
    """A smooth, non-quadratic problem: strongly convex softplus lower level, log-type upper level."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n_y, n_y, generator=gen, dtype=D)
    B = torch.randn(n_y, n_x, generator=gen, dtype=D)
    c = torch.randn(n_y, generator=gen, dtype=D)

    def lower(x, y):
        return torch.nn.functional.softplus(W @ y - B @ x).sum() + 0.5 * torch.exp(0.3 * x[0]) * (y ** 2).sum()

    def upper(x, y):
        return torch.log1p((y - c) ** 2).sum() + 0.1 * (x ** 2).sum() + torch.sin(x).sum() * y.sum() * 0.1

    x = torch.randn(n_x, generator=gen, dtype=D)
    y0 = torch.randn(n_y, generator=gen, dtype=D)
    return upper, lower, x, y0


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("alpha", [0.3, schedules.inverse(0.5), schedules.geometric(0.5, 0.9), lambda k: 0.9 / k])
def test_bda_equals_brute_force_unroll_quadratic(seed, alpha, quadratic):
    q = quadratic(3, 5, seed)
    K, s_u = 12, 0.6 * q["lr"]
    exact, yK = brute_bda(q["upper"], q["lower"], q["x"], q["y0"], K, q["lr"], s_u, alpha)
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="bda", inner_steps=K, inner_lr=q["lr"],
                            upper_lr=s_u, alpha=alpha)
    assert rel(res.grad, exact) < 1e-8
    assert torch.allclose(res.y, yK, rtol=1e-12, atol=1e-12)


def test_bda_default_options_equal_brute_force_with_documented_defaults():
    # defaults: upper_lr = inner_lr, alpha_k = 0.5 / k
    upper, lower, x, y0 = nonquadratic(2)
    exact, _ = brute_bda(upper, lower, x, y0, 9, 0.3, 0.3, lambda k: 0.5 / k)
    res = bilevel.hypergrad(upper, lower, x, y0, method="bda", inner_steps=9, inner_lr=0.3)
    assert rel(res.grad, exact) < 1e-8


def test_bda_nonquadratic_brute_force_and_finite_differences():
    upper, lower, x, y0 = nonquadratic(3)
    alpha = schedules.bda_theory(1.0, 0.3, 0.2, 2.0, 0.2)
    exact, _ = brute_bda(upper, lower, x, y0, 10, 0.2, 0.3, alpha)
    res = bilevel.hypergrad(upper, lower, x, y0, method="bda", inner_steps=10, inner_lr=0.2, upper_lr=0.3, alpha=alpha)
    assert rel(res.grad, exact) < 1e-8
    chk = bilevel.check_hypergrad(upper, lower, x, y0, method="bda", inner_steps=10, inner_lr=0.2, upper_lr=0.3,
                                  alpha=alpha)
    assert chk.ok, (chk.max_abs_error, chk.max_rel_error)


def test_bda_with_y_bounds_projects_after_the_aggregated_step():
    upper, lower, x, y0 = nonquadratic(4)
    lo, hi = -0.2, 0.3
    exact, yK = brute_bda(upper, lower, x, y0, 8, 0.3, 0.5, 0.4, proj=lambda y: torch.clamp(y, lo, hi))
    res = bilevel.hypergrad(upper, lower, x, y0, method="bda", inner_steps=8, inner_lr=0.3, upper_lr=0.5, alpha=0.4,
                            y_bounds=(lo, hi))
    assert rel(res.grad, exact) < 1e-8
    assert float(res.y.max()) <= hi and float(res.y.min()) >= lo
    assert torch.allclose(res.y, yK, rtol=1e-12, atol=1e-12)


def test_bda_dict_variables(quadratic):
    q = quadratic(4, 6, 5)

    def split(v, n):
        return {"a": v[:n].reshape(n, 1), "b": v[n:]}

    def join(d):
        return torch.cat([d["a"].reshape(-1), d["b"]])

    upper = lambda x, y: q["upper"](join(x), join(y))
    lower = lambda x, y: q["lower"](join(x), join(y))
    kw = dict(method="bda", inner_steps=7, inner_lr=q["lr"], upper_lr=0.5 * q["lr"], alpha=schedules.inverse(0.7))
    flat = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], **kw)
    tree = bilevel.hypergrad(upper, lower, split(q["x"], 2), split(q["y0"], 3), **kw)
    assert torch.allclose(join(tree.grad), flat.grad, rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------ identities with RHG
@pytest.mark.parametrize("bounds", [None, (-0.5, 0.5)])
def test_bda_with_alpha_zero_is_rhg_exactly(bounds):
    upper, lower, x, y0 = nonquadratic(5)
    kw = dict(inner_steps=11, inner_lr=0.25, y_bounds=bounds)
    r = bilevel.hypergrad(upper, lower, x, y0, method="rhg", **kw)
    for alpha in (0.0, schedules.constant(0.0), lambda k: 0):
        b = bilevel.hypergrad(upper, lower, x, y0, method="bda", alpha=alpha, upper_lr=0.9, **kw)
        assert torch.equal(b.grad, r.grad)
        assert torch.equal(b.y, r.y)


def test_bda_alpha_one_is_gradient_descent_on_the_upper_level():
    upper, lower, x, y0 = nonquadratic(6)
    exact, yK = brute_bda(upper, lower, x, y0, 6, 0.2, 0.4, 1.0)
    res = bilevel.hypergrad(upper, lower, x, y0, method="bda", inner_steps=6, inner_lr=0.2, upper_lr=0.4, alpha=1.0)
    assert rel(res.grad, exact) < 1e-8


def test_upper_objective_independent_of_y_is_allowed(quadratic):
    q = quadratic(2, 3, 0)
    res = bilevel.hypergrad(lambda x, y: (x ** 2).sum(), q["lower"], q["x"], q["y0"], method="bda", inner_steps=5,
                            inner_lr=q["lr"])
    assert torch.allclose(res.grad, 2 * q["x"])


# ------------------------------------------------------------------ proximal variant (supplement D.2)
def lasso(seed=0, n_x=3, n_y=6):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(8, n_y, generator=gen, dtype=D)
    M = torch.randn(8, n_x, generator=gen, dtype=D)
    t = torch.randn(n_y, generator=gen, dtype=D)

    def lower(x, y):  # smooth part f of the lasso-type lower level f + lam ||y||_1
        return 0.5 * ((A @ y - M @ x) ** 2).sum()

    def upper(x, y):
        return 0.5 * ((y - t) ** 2).sum() + 0.05 * (x ** 2).sum()

    x = torch.randn(n_x, generator=gen, dtype=D)
    lr = float(1.0 / torch.linalg.eigvalsh(A.T @ A).max())
    return upper, lower, x, torch.zeros(n_y, dtype=D), lr


def soft(v, thr):
    return torch.sign(v) * torch.clamp(v.abs() - thr, min=0.0)


@pytest.mark.parametrize("alpha", [0.0, 0.3, schedules.inverse(0.5)])
def test_bda_l1_prox_equals_brute_force(alpha):
    upper, lower, x, y0, lr = lasso(1)
    lam = 0.4
    exact, yK = brute_bda(upper, lower, x, y0, 15, lr, 0.5, alpha, g_prox=lambda v, s: soft(v, lam * s))
    res = bilevel.hypergrad(upper, lower, x, y0, method="bda", inner_steps=15, inner_lr=lr, upper_lr=0.5, alpha=alpha,
                            lower_prox=prox.l1(lam))
    assert rel(res.grad, exact) < 1e-8
    assert torch.allclose(res.y, yK, rtol=1e-12, atol=1e-12)
    smooth = bilevel.hypergrad(upper, lower, x, y0, method="bda", inner_steps=15, inner_lr=lr, upper_lr=0.5,
                               alpha=alpha)
    assert rel(smooth.grad, res.grad) > 1e-3  # the prox really changes the dynamics
    if alpha == 0.0:  # plain proximal gradient: sparse iterates (with alpha > 0 y_K mixes in a non-sparse step)
        assert int((res.y == 0).sum()) > 0


def test_bda_l1_prox_with_dict_y():
    upper, lower, x, y0, lr = lasso(2)
    split = lambda v: {"u": v[:2], "w": v[2:].reshape(2, 2)}
    join = lambda d: torch.cat([d["u"], d["w"].reshape(-1)])
    kw = dict(method="bda", inner_steps=10, inner_lr=lr, upper_lr=0.5, alpha=0.2)
    flat = bilevel.hypergrad(upper, lower, x, y0, lower_prox=prox.l1(0.3), **kw)
    tree = bilevel.hypergrad(lambda x, y: upper(x, join(y)), lambda x, y: lower(x, join(y)), x, split(y0),
                             lower_prox=prox.l1({"u": 0.3, "w": 0.3}), **kw)
    assert torch.allclose(tree.grad, flat.grad, rtol=1e-13, atol=1e-14)
    assert torch.allclose(join(tree.y), flat.y, rtol=1e-13, atol=1e-14)


def test_box_prox_with_alpha_zero_equals_y_bounds_projection():
    upper, lower, x, y0 = nonquadratic(7)
    kw = dict(inner_steps=9, inner_lr=0.3)
    r = bilevel.hypergrad(upper, lower, x, y0, method="rhg", y_bounds=(-0.3, 0.2), **kw)
    b = bilevel.hypergrad(upper, lower, x, y0, method="bda", alpha=0.0, lower_prox=prox.box(-0.3, 0.2), **kw)
    assert torch.equal(b.grad, r.grad) and torch.equal(b.y, r.y)


def test_box_prox_inside_the_lower_direction_is_what_supplement_d2_defines():
    # with alpha > 0 the prox acts on the lower direction only (Eq. 13), not on the aggregated iterate
    upper, lower, x, y0 = nonquadratic(8)
    box = lambda v, s: torch.clamp(v, -0.3, 0.2)
    exact, _ = brute_bda(upper, lower, x, y0, 7, 0.3, 0.4, 0.5, g_prox=box)
    res = bilevel.hypergrad(upper, lower, x, y0, method="bda", inner_steps=7, inner_lr=0.3, upper_lr=0.4, alpha=0.5,
                            lower_prox=prox.box(-0.3, 0.2))
    assert rel(res.grad, exact) < 1e-8


def test_user_prox_receives_the_user_structure():
    upper, lower, x, y0, lr = lasso(3)
    seen = []

    def my_prox(v, step):
        seen.append((type(v), tuple(v.shape), step))
        return soft(v, 0.1 * step)

    y2 = torch.zeros(2, 3, dtype=D)
    bilevel.hypergrad(lambda x, y: upper(x, y.reshape(-1)), lambda x, y: lower(x, y.reshape(-1)), x, y2,
                      method="bda", inner_steps=2, inner_lr=lr, lower_prox=my_prox)
    assert seen and all(s[1] == (2, 3) and s[2] == lr for s in seen)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("opts,match", [
    ({"alpha": 1.5}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": "half"}, "alpha"),
    ({"alpha": True}, "alpha"),
    ({"alpha": lambda k: 2.0 / k}, r"alpha\(1\) = 2.0 is outside \[0, 1\]"),
    ({"alpha": lambda k: 0.5 if k < 3 else -1.0}, r"alpha\(3\)"),
    ({"alpha": lambda k: "x"}, r"alpha\(1\)"),
    ({"upper_lr": -1.0}, "upper_lr must be > 0"),
    ({"upper_lr": 0.0}, "upper_lr must be > 0"),
    ({"upper_lr": float("inf")}, "upper_lr must be finite"),
    ({"lower_prox": 3}, "lower_prox must be a callable"),
    ({"truncate": 3}, r"unknown option\(s\) 'truncate' for method 'bda'"),
    ({"bigsam_every": 2}, r"unknown option\(s\) 'bigsam_every'"),
    ({"lower_prox": lambda v, s: v[:1]}, "lower_prox must return"),
])
def test_bda_option_validation(opts, match, quadratic):
    q = quadratic(2, 3, 0)
    with pytest.raises(ValueError, match=match):
        bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="bda", inner_steps=4, inner_lr=q["lr"],
                          **opts)


def test_bda_is_registered_with_its_options():
    m = bilevel.METHODS["bda"]
    assert m.options == ("upper_lr", "alpha", "lower_prox", "checkpoint", "engine", "compile_block")
    assert not m.learns_init


# ------------------------------------------------------------------ BDA counter-example (Eq. 5)
F5, f5 = bda_counterexample.upper, bda_counterexample.lower


def solve5(method, y0, K=16, T=40, **opts):
    res = bilevel.solve(F5, f5, torch.zeros(1, dtype=D), torch.tensor(y0, dtype=D), method=method, outer_steps=T,
                        outer_lr=0.5, outer_optimizer="sgd", inner_steps=K, inner_lr=0.2, x_bounds=(-100, 100), **opts)
    return float(res.x[0])


def minimizer5(method, y0, K, **opts):
    """phi_K is quadratic in x here: its exact minimizer from two hypergradients (one Newton step)."""
    g = [float(bilevel.hypergrad(F5, f5, torch.tensor([v], dtype=D), torch.tensor(y0, dtype=D), method=method,
                                 inner_steps=K, inner_lr=0.2, **opts).grad[0]) for v in (0.0, 1.0)]
    return -g[0] / (g[1] - g[0])


@pytest.mark.parametrize("y0,stall", [([0.0, 0.0], 0.4998), ([2.0, 2.0], 1.5002)])
def test_counterexample_rhg_stalls_at_a_wrong_point(y0, stall):
    x = solve5("rhg", y0, T=25)
    assert abs(x - stall) < 1e-3 and abs(x - 1) > 0.45
    assert abs(solve5("bda", y0, T=25, alpha=0.0) - x) < 1e-12  # alpha = 0 is RHG


@pytest.mark.parametrize("y0", [[0.0, 0.0], [2.0, 2.0]])
def test_counterexample_bda_approaches_the_solution(y0):
    x = solve5("bda", y0, T=40, upper_lr=0.7, alpha=schedules.geometric(0.5, 0.9))
    assert abs(x - 1) < 1e-2  # measured 0.0040 (alpha_k = 0.5 * 0.9^k, k = 1..16); RHG stalls 0.5 away
    x_theory = minimizer5("bda", y0, 16, upper_lr=0.7, alpha=schedules.bda_theory(1.0, 0.7, 1.0, 1.0, 0.1))
    assert abs(x_theory - 1) < 1e-4  # measured 3.2e-5


def test_counterexample_bda_harmonic_bias_shrinks_with_K():
    bias = [abs(minimizer5("bda", [2.0, 2.0], K, upper_lr=0.7, alpha=schedules.inverse(0.5)) - 1) for K in (8, 16, 64)]
    assert bias[0] > bias[1] > bias[2]
    assert abs(bias[1] - 0.0832) < 1e-3 and bias[2] < 0.03


def test_synthetic_experiment_helpers_match_solve():
    from bilevel.app.experiments import synthetic_bda as sb

    s = sb.Setting("bda", "0.5/k", 16, 0.0, (2.0, 2.0))
    rows = sb.trace(s, 4)
    x = solve5("bda", [2.0, 2.0], T=4, upper_lr=0.7, alpha=schedules.inverse(0.5))
    assert abs(rows[-1]["x"] - x) < 1e-12
    assert set(rows[0]) == {"step", "x", "F_gap", "f_gap", "x_err", "y_err"}
    assert abs(sb.exact_minimizer(sb.Setting("rhg", "0", 16, 0.0, (0.0, 0.0))) - 0.4998) < 1e-4
