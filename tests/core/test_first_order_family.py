"""The first-order family (methods that carry y across outer steps): one outer step equals a brute-force
re-implementation of the paper's update written here (float64, non-quadratic problem), the OuterLoop carries y and
the method state, and DARTS's finite-difference direction converges to the exact one-step unroll at order 2."""
import math

import pytest
import torch

import bilevel

D = torch.float64
G = torch.Generator().manual_seed(0)
A = torch.randn(6, 4, generator=G, dtype=D)
B = torch.randn(6, generator=G, dtype=D)
X0 = 0.1 * torch.randn(4, generator=G, dtype=D)
Y0 = torch.randn(4, generator=G, dtype=D)
K, LR = 3, 0.3


def lower(x, y):  # strongly convex in y, non-quadratic, with a mixed term whose x-gradient is not polynomial in y
    return (0.5 * ((A @ y - B) ** 2).mean() + 0.5 * (torch.exp(x) * y ** 2).sum()
            + 0.1 * torch.log(torch.cosh(y)).sum() + 0.1 * torch.sin(x * y).sum())


def upper(x, y):
    return ((y - 1.0) ** 2).sum() + (torch.sin(y) * x).sum() + 0.05 * (x ** 2).sum()


def _grad(fn, wrt, *args, create_graph=False):
    """d fn(*args) / d args[wrt], by plain autograd on fresh leaves."""
    leaves = [a.detach().clone().requires_grad_(i == wrt) for i, a in enumerate(args)]
    (g,) = torch.autograd.grad(fn(*leaves), leaves[wrt], create_graph=create_graph)
    return g


def _gd(x, y, steps=K, lr=LR):
    for _ in range(steps):
        y = y - lr * _grad(lower, 1, x, y)
    return y


def test_alternating_step_is_K_gradient_steps_then_the_partial_gradient():
    res = bilevel.hypergrad(upper, lower, X0, Y0, method="alternating", inner_steps=K, inner_lr=LR)
    yk = _gd(X0, Y0)
    torch.testing.assert_close(res.y, yk, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.grad, _grad(upper, 0, X0, yk), rtol=1e-10, atol=1e-12)


def _darts_exact(x, y, xi):
    """grad_x F(x, y_K - xi grad_y f(x, y_K)) with y_K fixed, through autograd of the look-ahead itself."""
    xl = x.clone().requires_grad_()
    yl = y.clone().requires_grad_()
    (gy,) = torch.autograd.grad(lower(xl, yl), yl, create_graph=True)
    ahead = y - xi * gy
    (gx,) = torch.autograd.grad(upper(xl, ahead), xl)
    return gx


def test_darts_exact_equals_the_one_step_unroll_gradient():
    res = bilevel.hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR, xi=0.2, exact=True)
    yk = _gd(X0, Y0)
    torch.testing.assert_close(res.y, yk, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.grad, _darts_exact(X0, yk, 0.2), rtol=1e-10, atol=1e-12)


def test_darts_finite_difference_is_darts_eq_8():
    """The finite-difference direction with DARTS's eps = epsilon / ||v||, written out."""
    res = bilevel.hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR, epsilon=0.05)
    yk = _gd(X0, Y0)
    ahead = yk - LR * _grad(lower, 1, X0, yk)  # xi defaults to inner_lr
    v = _grad(upper, 1, X0, ahead)
    eps = 0.05 / v.norm()
    fd = (_grad(lower, 0, X0, yk + eps * v) - _grad(lower, 0, X0, yk - eps * v)) / (2 * eps)
    torch.testing.assert_close(res.grad, _grad(upper, 0, X0, ahead) - LR * fd, rtol=1e-10, atol=1e-12)


def test_darts_finite_difference_converges_at_order_two():
    exact = bilevel.hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR, exact=True).grad
    errs = [float((bilevel.hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR,
                                     epsilon=e).grad - exact).norm()) for e in (0.4, 0.2, 0.1)]
    assert errs[0] > 1e-6  # the finite difference has an error to measure
    for a, b in zip(errs, errs[1:]):
        assert 3.5 < a / b < 4.5, errs  # halving epsilon divides the error by 4


def test_darts_xi_zero_is_alternating():
    a = bilevel.hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR, xi=0.0)
    b = bilevel.hypergrad(upper, lower, X0, Y0, method="alternating", inner_steps=K, inner_lr=LR)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.parametrize("method,opts", [("alternating", {}), ("darts", {"exact": True, "xi": 0.2})])
def test_outer_loop_carries_y(method, opts):
    """Three OuterLoop steps with SGD equal the alternation written out: y continues from the previous step."""
    loop = bilevel.OuterLoop(X0, Y0, method=method, outer_lr=0.1, outer_optimizer="sgd", inner_steps=K,
                             inner_lr=LR, **opts)
    x, y = X0.clone(), Y0.clone()
    for _ in range(3):
        loop.step(upper, lower)
        y = _gd(x, y)
        d = _grad(upper, 0, x, y) if method == "alternating" else _darts_exact(x, y, 0.2)
        x = x - 0.1 * d
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)


def test_methods_listing_says_y_is_carried():
    for name in ("alternating", "darts"):
        assert bilevel.METHODS[name].carries_y
    assert not bilevel.METHODS["rhg"].carries_y


def test_darts_refuses_bad_options():
    with pytest.raises(ValueError, match="epsilon"):
        bilevel.hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR, epsilon=0.0)
    with pytest.raises(ValueError, match="xi"):
        bilevel.hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR, xi=-1.0)


# ---------------------------------------------------------------------------------------------- joint (x, y) steps
def test_bome_step_is_algorithm_1():
    res = bilevel.hypergrad(upper, lower, X0, Y0, method="bome", inner_steps=K, inner_lr=LR, eta=0.7, y_lr=0.05)
    theta = _gd(X0, Y0)  # theta_0 = y, T steps
    gFx, gFy = _grad(upper, 0, X0, Y0), _grad(upper, 1, X0, Y0)
    gqx = _grad(lower, 0, X0, Y0) - _grad(lower, 0, X0, theta)
    gqy = _grad(lower, 1, X0, Y0)
    n2 = gqx @ gqx + gqy @ gqy
    lam = torch.clamp(0.7 * n2 - (gFx @ gqx + gFy @ gqy), min=0) / n2
    assert lam > 0  # the multiplier is active here, so the test sees it
    torch.testing.assert_close(res.grad, gFx + lam * gqx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.y, Y0 - 0.05 * (gFy + lam * gqy), rtol=1e-10, atol=1e-12)
    assert abs(res.info["bome_lambda"] - float(lam)) < 1e-10
    # phi = "value": phi = eta * (f(x, y) - f(x, theta_T))
    res = bilevel.hypergrad(upper, lower, X0, Y0, method="bome", inner_steps=K, inner_lr=LR, eta=0.7, phi="value")
    gap = lower(X0, Y0) - lower(X0, theta)
    lam = torch.clamp(0.7 * gap - (gFx @ gqx + gFy @ gqy), min=0) / n2
    torch.testing.assert_close(res.grad, gFx + lam * gqx, rtol=1e-10, atol=1e-12)


def test_vpbgd_steps_are_algorithm_1_with_a_carried_y_hat():
    gamma, beta, alpha, xlr = 3.0, LR, 0.04, 0.02
    loop = bilevel.OuterLoop(X0, Y0, method="vpbgd", outer_lr=xlr, outer_optimizer="sgd", inner_steps=K, inner_lr=beta,
                             gamma=gamma, y_lr=alpha)
    x, y, y_hat = X0.clone(), Y0.clone(), Y0.clone()
    for _ in range(3):
        loop.step(upper, lower)
        y_hat = _gd(x, y_hat, lr=beta)
        dx = _grad(upper, 0, x, y) + gamma * (_grad(lower, 0, x, y) - _grad(lower, 0, x, y_hat))
        dy = _grad(upper, 1, x, y) + gamma * _grad(lower, 1, x, y)
        x, y = x - xlr * dx, y - alpha * dy
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)
    # the default y step is inner_lr / (1 + gamma)
    res = bilevel.hypergrad(upper, lower, X0, Y0, method="vpbgd", inner_steps=K, inner_lr=beta, gamma=gamma)
    want = Y0 - beta / (1 + gamma) * (_grad(upper, 1, X0, Y0) + gamma * _grad(lower, 1, X0, Y0))
    torch.testing.assert_close(res.y, want, rtol=1e-10, atol=1e-12)


def test_f2sa_steps_are_algorithm_1_with_the_multiplier_schedule():
    lam0, b, a, alpha0, xlr = 2.0, 0.5, 0.25, 0.03, 0.02
    loop = bilevel.OuterLoop(X0, Y0, method="f2sa", outer_lr=xlr, outer_optimizer="sgd", inner_steps=K, inner_lr=LR,
                             lam=lam0, lam_power=b, y_lr=alpha0, y_lr_power=a)
    x, y, z = X0.clone(), Y0.clone(), Y0.clone()
    for k in range(3):
        rec = loop.step(upper, lower)
        lam, alpha = lam0 * (k + 1) ** b, alpha0 * (k + 1) ** (-a)
        assert abs(rec["f2sa_lambda"] - lam) < 1e-12
        for _ in range(K):
            z, y = (z - LR * _grad(lower, 1, x, z),
                    y - alpha * (_grad(upper, 1, x, y) + lam * _grad(lower, 1, x, y)))
        x = x - xlr * (_grad(upper, 0, x, y) + lam * (_grad(lower, 0, x, y) - _grad(lower, 0, x, z)))
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)


def test_joint_state_is_checkpointed_and_resumes_bitwise():
    for method, opts in (("f2sa", {"lam": 2.0}), ("vpbgd", {"gamma": 3.0})):
        loop = bilevel.OuterLoop(X0, Y0, method=method, outer_lr=0.02, inner_steps=K, inner_lr=LR, **opts)
        loop.step(upper, lower)
        state = loop.state_dict()
        a = [loop.step(upper, lower)["upper"] for _ in range(2)]
        again = bilevel.OuterLoop(X0, Y0, method=method, outer_lr=0.02, inner_steps=K, inner_lr=LR, **opts)
        again.load_state_dict(state)
        assert [again.step(upper, lower)["upper"] for _ in range(2)] == a, method
        torch.testing.assert_close(again.x, loop.x, rtol=0, atol=0)


def test_joint_methods_refuse_bad_options_and_inner_optimizers():
    with pytest.raises(ValueError, match="phi"):
        bilevel.hypergrad(upper, lower, X0, Y0, method="bome", inner_steps=K, inner_lr=LR, phi="norm")
    with pytest.raises(ValueError, match="gamma"):
        bilevel.hypergrad(upper, lower, X0, Y0, method="vpbgd", inner_steps=K, inner_lr=LR, gamma=0.0)
    with pytest.raises(ValueError, match="own inner dynamics"):
        bilevel.hypergrad(upper, lower, X0, Y0, method="f2sa", inner_steps=K, inner_lr=LR, inner_optimizer="adam")


def test_iga_is_the_gradient_response_direction():
    res = bilevel.hypergrad(upper, lower, X0, Y0, method="iga", inner_steps=K, inner_lr=LR)
    yk = _gd(X0, Y0)
    gfy, gFy = _grad(lower, 1, X0, yk), _grad(upper, 1, X0, yk)
    rho = (gFy @ gfy) / (gfy @ gfy)
    torch.testing.assert_close(res.y, yk, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.grad, _grad(upper, 0, X0, yk) - rho * _grad(lower, 0, X0, yk), rtol=1e-10,
                               atol=1e-12)


def test_meha_steps_are_the_gauss_seidel_iteration():
    gamma, c, p, eta, beta, xlr = 2.0, 1.5, 0.25, 0.2, 0.1, 0.05
    loop = bilevel.OuterLoop(X0, Y0, method="meha", outer_lr=xlr, outer_optimizer="sgd", inner_steps=1, inner_lr=eta,
                             gamma=gamma, c=c, p=p, y_lr=beta)
    x, y, theta = X0.clone(), Y0.clone(), Y0.clone()
    for k in range(4):
        rec = loop.step(upper, lower)
        ck = c * (k + 1) ** p
        assert abs(rec["meha_c"] - ck) < 1e-12
        theta = theta - eta * (_grad(lower, 1, x, theta) + (theta - y) / gamma)
        x_new = x - xlr * (_grad(upper, 0, x, y) / ck + _grad(lower, 0, x, y) - _grad(lower, 0, x, theta))
        # y's step at the new x; the loop takes it at the start of its next step, so compare y one step behind
        torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)
        y = y - beta * (_grad(upper, 1, x_new, y) / ck + _grad(lower, 1, x_new, y) - (y - theta) / gamma)
        x = x_new
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)


def _hvp(fn, x, y, v, wrt):
    """(d/d args[wrt]) <grad_y fn(x, y), v> by autograd on fresh leaves."""
    xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
    (gy,) = torch.autograd.grad(fn(xl, yl), yl, create_graph=True)
    (h,) = torch.autograd.grad(gy @ v, (xl, yl)[wrt])
    return h


def test_bamm_steps_are_the_jacobi_iteration():
    mu0, p, s, eta, xlr = 0.5, 2.0, 0.2, 0.1, 0.05
    loop = bilevel.OuterLoop(X0, Y0, method="bamm", outer_lr=xlr, outer_optimizer="sgd", inner_steps=1, inner_lr=s,
                             mu0=mu0, p=p, z_lr=eta)
    x, y, z = X0.clone(), Y0.clone(), torch.zeros(4, dtype=D)
    for k in range(3):
        rec = loop.step(upper, lower)
        mu = mu0 * (k + 1) ** (-1 / p)
        assert abs(rec["bamm_mu"] - mu) < 1e-12

        def phi(a, b, mu=mu):
            return mu * upper(a, b) + (1 - mu) * lower(a, b)
        dx = _grad(upper, 0, x, y) - (_hvp(phi, x, y, z, 0) if k else 0)
        r = (_hvp(phi, x, y, z, 1) if k else 0) - _grad(upper, 1, x, y)
        x, y, z = x - xlr * dx, y - s * _grad(phi, 1, x, y), z - eta * r
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)


def _g(x, y):  # a lower-level constraint g(x, y) <= 0 that binds at the start
    return torch.stack([y.sum() - 0.5 + 0.1 * x[0], (y ** 2).sum() - 2.0])


def test_gaffa_steps_are_the_jacobi_iteration_with_a_lower_level_constraint():
    g1, g2, c, p, eta, a, b, xlr, r = 2.0, 0.5, 1.5, 0.25, 0.2, 0.1, 0.3, 0.05, 3.0
    loop = bilevel.OuterLoop(X0, Y0, method="gaffo", outer_lr=xlr, outer_optimizer="sgd", inner_steps=1,
                             inner_lr=eta, gamma1=g1, gamma2=g2, c=c, p=p, y_lr=a, z_lr=b, r=r, ll_constraint=_g)
    x, y, theta, z = X0.clone(), Y0.clone(), Y0.clone(), torch.zeros(2, dtype=D)

    def lag(zz):
        return lambda xx, yy: lower(xx, yy) + zz @ _g(xx, yy)
    for k in range(4):
        loop.step(upper, lower)
        ck = c * (k + 1) ** p
        theta = theta - eta * (_grad(lag(z), 1, x, theta) + (theta - y) / g1)
        lam = torch.clamp(z + g2 * _g(x, y), min=0)
        at_y = lambda xx, yy, lam=lam, ck=ck: upper(xx, yy) / ck + lag(lam)(xx, yy)
        dx = _grad(at_y, 0, x, y) - _grad(lag(z), 0, x, theta)
        dy = _grad(at_y, 1, x, y) - (y - theta) / g1
        dz = -_g(x, theta) - (z - lam) / g2
        x, y, z = x - xlr * dx, y - a * dy, torch.clamp(z - b * dz, 0, r)
        if k == 0:
            assert lam.max() > 0  # the constraint is active, so its terms are tested
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)


def test_check_hypergrad_refuses_joint_steps_and_checks_darts_exact():
    with pytest.raises(ValueError, match="joint"):
        bilevel.check_hypergrad(upper, lower, X0, Y0, method="bome", inner_steps=K, inner_lr=LR)
    # darts with exact=True differentiates F(x, y_K - xi grad_y f(x, y_K)) with y_K frozen; finite differences of
    # that function with y_K recomputed at each x include d y_K / dx, which darts drops: they differ
    chk = bilevel.check_hypergrad(upper, lower, X0, Y0, method="darts", inner_steps=K, inner_lr=LR, exact=True)
    assert not chk.ok and chk.max_rel_error > 1e-3


def test_bamm_line_search_takes_the_exact_step_along_the_residual():
    mu0, s, xlr = 0.5, 0.2, 0.05
    loop = bilevel.OuterLoop(X0, Y0, method="bamm", outer_lr=xlr, outer_optimizer="sgd", inner_steps=1, inner_lr=s,
                             mu0=mu0, p=math.inf, line_search=True)
    x, y, z = X0.clone(), Y0.clone(), torch.zeros(4, dtype=D)

    def phi(a, b):
        return mu0 * upper(a, b) + (1 - mu0) * lower(a, b)
    for _ in range(3):
        rec = loop.step(upper, lower)
        r = _hvp(phi, x, y, z, 1) - _grad(upper, 1, x, y)
        eta = (r @ r) / (r @ _hvp(phi, x, y, r, 1))
        assert abs(rec["bamm_eta"] - float(eta)) < 1e-10
        dx = _grad(upper, 0, x, y) - _hvp(phi, x, y, z, 0)
        x, y, z = x - xlr * dx, y - s * _grad(phi, 1, x, y), z - eta * r
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)


def test_vpbgd_yhat_start_y_restarts_the_inner_estimate_at_y():
    gamma, beta, alpha, xlr = 3.0, LR, 0.04, 0.02
    loop = bilevel.OuterLoop(X0, Y0, method="vpbgd", outer_lr=xlr, outer_optimizer="sgd", inner_steps=K, inner_lr=beta,
                             gamma=gamma, y_lr=alpha, yhat_start="y")
    x, y = X0.clone(), Y0.clone()
    for _ in range(3):
        loop.step(upper, lower)
        y_hat = _gd(x, y, lr=beta)  # from the current y every step
        dx = _grad(upper, 0, x, y) + gamma * (_grad(lower, 0, x, y) - _grad(lower, 0, x, y_hat))
        x, y = x - xlr * dx, y - alpha * (_grad(upper, 1, x, y) + gamma * _grad(lower, 1, x, y))
    torch.testing.assert_close(loop.x, x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loop.y, y, rtol=1e-10, atol=1e-12)
