"""BiG-SAM inner loop of the improved bilevel model ("bigsam", Li-Gu-Huang 2020): exactness against a brute-force
unroll written as in the paper's Algorithm 1, identities with RHG and BDA, the every-m ablation, validation."""
import pytest
import torch

import bilevel
from bilevel import schedules
from test_bda import minimizer5, nonquadratic, rel

D = torch.float64


def brute_bigsam(upper, lower, x, y0, K, t, s, alpha, every=1, proj=None):
    """Algorithm 1 with h = lower, g = upper: theta = w - t grad h, phi = w - s grad g,
    w_{k+1} = alpha_{k+1} theta + (1 - alpha_{k+1}) phi on steps k + 1 = every, 2 every, ...; theta otherwise."""
    x = x.clone().requires_grad_()
    w = y0.clone().requires_grad_()
    for k in range(K):
        (gh,) = torch.autograd.grad(lower(x, w), w, create_graph=True)
        theta = w - t * gh
        if (k + 1) % every == 0:
            a = alpha(k + 1) if callable(alpha) else alpha
            (gg,) = torch.autograd.grad(upper(x, w), w, create_graph=True)
            phi = w - s * gg
            w = a * theta + (1 - a) * phi
        else:
            w = theta
        if proj is not None:
            w = proj(w)
    (grad,) = torch.autograd.grad(upper(x, w), x)
    return grad, w.detach()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("alpha", [None, 0.6, schedules.power(0.5)])
def test_bigsam_equals_brute_force_unroll(seed, every, alpha, quadratic):
    q = quadratic(3, 5, seed)
    K, s = 13, 0.7 * q["lr"]
    ref_alpha = (lambda k: k ** -0.25) if alpha is None else alpha  # documented default k^-0.25
    exact, yK = brute_bigsam(q["upper"], q["lower"], q["x"], q["y0"], K, q["lr"], s, ref_alpha, every)
    opts = {} if alpha is None else {"alpha": alpha}
    res = bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="bigsam", inner_steps=K, inner_lr=q["lr"],
                            upper_lr=s, bigsam_every=every, **opts)
    assert rel(res.grad, exact) < 1e-8
    assert torch.allclose(res.y, yK, rtol=1e-12, atol=1e-12)


def test_bigsam_nonquadratic_brute_force_finite_differences_and_bounds():
    upper, lower, x, y0 = nonquadratic(11)
    kw = dict(inner_steps=10, inner_lr=0.2, upper_lr=0.3, bigsam_every=2)
    exact, _ = brute_bigsam(upper, lower, x, y0, 10, 0.2, 0.3, lambda k: k ** -0.25, every=2,
                            proj=lambda w: torch.clamp(w, -0.4, 0.4))
    res = bilevel.hypergrad(upper, lower, x, y0, method="bigsam", y_bounds=(-0.4, 0.4), **kw)
    assert rel(res.grad, exact) < 1e-8
    chk = bilevel.check_hypergrad(upper, lower, x, y0, method="bigsam", **kw)
    assert chk.ok, (chk.max_abs_error, chk.max_rel_error)


@pytest.mark.parametrize("opts", [{"alpha": 1.0}, {"alpha": schedules.constant(1.0)}, {"bigsam_every": 50}])
def test_bigsam_reduces_to_rhg_exactly(opts):
    upper, lower, x, y0 = nonquadratic(12)
    kw = dict(inner_steps=9, inner_lr=0.25, y_bounds=(-1.0, 1.0))
    r = bilevel.hypergrad(upper, lower, x, y0, method="rhg", **kw)
    b = bilevel.hypergrad(upper, lower, x, y0, method="bigsam", upper_lr=0.5, **kw, **opts)
    assert torch.equal(b.grad, r.grad) and torch.equal(b.y, r.y)


def test_bigsam_alpha_is_bda_one_minus_alpha():
    upper, lower, x, y0 = nonquadratic(13)
    kw = dict(inner_steps=8, inner_lr=0.2, upper_lr=0.35)
    a = schedules.power(0.25)
    big = bilevel.hypergrad(upper, lower, x, y0, method="bigsam", alpha=a, **kw)
    bda = bilevel.hypergrad(upper, lower, x, y0, method="bda", alpha=lambda k: 1.0 - a(k), **kw)
    assert rel(big.grad, bda.grad) < 1e-12


def test_bigsam_every_m_aggregates_exactly_on_steps_m_2m():
    # with K < m no step aggregates (RHG); with K = m exactly the last one does
    upper, lower, x, y0 = nonquadratic(14)
    kw = dict(inner_lr=0.2, upper_lr=0.4, alpha=0.3, bigsam_every=4)
    r3 = bilevel.hypergrad(upper, lower, x, y0, method="rhg", inner_steps=3, inner_lr=0.2)
    b3 = bilevel.hypergrad(upper, lower, x, y0, method="bigsam", inner_steps=3, **kw)
    assert torch.equal(b3.grad, r3.grad)
    exact, _ = brute_bigsam(upper, lower, x, y0, 4, 0.2, 0.4, lambda k: 0.3 if k == 4 else 1.0)
    b4 = bilevel.hypergrad(upper, lower, x, y0, method="bigsam", inner_steps=4, **kw)
    assert rel(b4.grad, exact) < 1e-8


@pytest.mark.parametrize("opts,match", [
    ({"bigsam_every": 0}, "bigsam_every must be >= 1"),
    ({"bigsam_every": 1.5}, "bigsam_every must be an integer"),
    ({"alpha": 2.0}, "alpha"),
    ({"alpha": lambda k: -0.5}, r"alpha\(1\) = -0.5 is outside \[0, 1\]"),
    ({"upper_lr": -0.1}, "upper_lr must be > 0"),
    ({"lower_prox": lambda v, s: v}, r"unknown option\(s\) 'lower_prox' for method 'bigsam'"),
])
def test_bigsam_option_validation(opts, match, quadratic):
    q = quadratic(2, 3, 0)
    with pytest.raises(ValueError, match=match):
        bilevel.hypergrad(q["upper"], q["lower"], q["x"], q["y0"], method="bigsam", inner_steps=4, inner_lr=q["lr"],
                          **opts)


def test_bigsam_is_registered_with_its_options():
    assert bilevel.METHODS["bigsam"].options == ("upper_lr", "alpha", "bigsam_every", "checkpoint", "engine",
                                                 "compile_block")


@pytest.mark.parametrize("y0,stall", [([0.0, 0.0], 0.4998), ([2.0, 2.0], 1.5002)])
def test_bigsam_on_the_bda_counterexample(y0, stall):
    # phi_16 is quadratic in x: its exact minimizer. Default alpha_k = k^-0.25 on the lower step, s = 0.7, t = 0.2:
    # 1 -+ 6.3e-4. Aggregating only every m-th step moves it back towards RHG's stall point (the ablation).
    err = [abs(minimizer5("bigsam", y0, 16, upper_lr=0.7, bigsam_every=m) - 1) for m in (1, 2, 4, 8)]
    assert err[0] < 1e-3
    assert err[0] < err[1] < err[2] < err[3] < abs(stall - 1)
    assert abs(minimizer5("bigsam", y0, 16, upper_lr=0.7, bigsam_every=16) - stall) < 1e-3
