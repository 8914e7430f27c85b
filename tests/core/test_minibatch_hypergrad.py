"""Mini-batched hypergradients (hypergrad / check_hypergrad / solve with n_lower, batch_size): every inner step draws
its own batch, replayed exactly by checkpointing, forward mode and finite differences; batch_size = n is the full
batch; cg's Hessian-vector products use the batch after the loop."""
import pytest
import torch

import bilevel
from bilevel.problems.finite_sum import make_finite_sum_quadratic
from bilevel.stochastic import StepBatches

DT = torch.float64
N = 24
PB = make_finite_sum_quadratic(N, 8, 4, 3, mu=0.3, L=1.0, noise=0.3, seed=1)
X = torch.tensor([0.3, -0.7, 1.1], dtype=DT)
Y0 = torch.tensor([0.1, 0.2, -0.3, 0.4], dtype=DT)
KW = dict(inner_steps=12, inner_lr=0.5, n_lower=N, batch_size=5, batch_seed=3)


def hg(method, **kw):
    return bilevel.hypergrad(PB.upper, PB.lower, X, Y0, method=method, **{**KW, **kw})


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_batch_size_n_equals_the_full_batch_result():
    for method in ("rhg", "fhg", "cg"):
        full = bilevel.hypergrad(lambda x, y: PB.upper(x, y), lambda x, y: PB.lower(x, y), X, Y0, method=method,
                                 inner_steps=12, inner_lr=0.5)
        res = hg(method, batch_size=N)
        assert rel(res.grad, full.grad) < 1e-12 and rel(res.y, full.y) < 1e-12


def test_each_step_draws_its_batch_and_rhg_is_exact():
    # y_K by hand with the documented draws, and the gradient of F(x, y_K(x)) through them by autograd
    draws = StepBatches(N, 5, 3)

    def unroll(x):
        y = Y0
        for k in range(12):
            g = torch.func.grad(lambda yy: PB.lower(x, yy, draws(k)))(y)
            y = y - 0.5 * g
        return y

    res = hg("rhg")
    assert rel(res.y, unroll(X)) < 1e-12
    assert rel(res.grad, torch.func.grad(lambda x: PB.upper(x, unroll(x)))(X)) < 1e-10
    assert rel(res.grad, hg("rhg", batch_size=N).grad) > 1e-3  # the batches matter


def test_checkpointed_forward_and_reverse_replay_the_same_draws():
    ref = hg("rhg").grad
    for kw in ({"method": "rhg", "checkpoint": 4}, {"method": "rhg", "checkpoint": 5}, {"method": "fhg"}):
        assert rel(hg(**kw).grad, ref) < 1e-12, kw
    assert bilevel.check_hypergrad(PB.upper, PB.lower, X, Y0, method="rhg", rtol=1e-6, **KW).ok


def test_cg_uses_the_batch_after_the_loop():
    res = hg("cg", cg_steps=200, cg_tol=1e-14)
    idx = StepBatches(N, 5, 3)(12)
    A, C = PB.A[idx].mean(0), PB.C[idx].mean(0)
    y = res.y
    fy = PB.P.mean(0) @ y + PB.D.mean(0).T @ X + PB.p.mean(0)
    fx = PB.R @ X + PB.D.mean(0) @ y + PB.r.mean(0)
    assert rel(res.grad, fx - C @ torch.linalg.solve(A, fy)) < 1e-10


def test_outer_steps_draw_new_batches_and_resume_the_same():
    kw = dict(method="rhg", outer_lr=0.05, outer_optimizer="sgd", **KW)
    a = bilevel.OuterLoop(X, Y0, **kw)
    for _ in range(3):
        a.step(PB.upper, PB.lower)
    b = bilevel.OuterLoop(X, Y0, **kw)
    b.step(PB.upper, PB.lower)
    c = bilevel.OuterLoop(X, Y0, **kw)
    c.load_state_dict(b.state_dict())
    for _ in range(2):
        c.step(PB.upper, PB.lower)
    assert torch.equal(a.x, c.x)
    out = bilevel.solve(PB.upper, PB.lower, X, Y0, outer_steps=3, **kw)
    assert torch.equal(out.x, a.x)


def test_bad_batch_arguments_and_methods_without_a_loop_are_refused():
    with pytest.raises(ValueError, match="both n_lower .* and batch_size"):
        hg("rhg", batch_size=None)
    with pytest.raises(ValueError, match="batch_size between 1 and 24"):
        hg("rhg", batch_size=25)
    with pytest.raises(ValueError, match="does not run its inner loop through the mini-batch draws"):
        hg("bvfim")
