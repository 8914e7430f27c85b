"""Issue 14, section 2: the Python API never hands back a wrong number silently.

Each test fails on the code before the issue (a774cd7) and passes after it.
"""
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import bilevel
from bilevel import linear_solve

D = torch.float64
H2 = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=D)   # the README's quick-start problem, L = 2.08


def quick_lower(x, y):
    return 0.5 * y @ H2 @ y - y @ x


def quick_upper(x, y):
    return ((y - 1.0) ** 2).sum() + 0.01 * (x ** 2).sum()


X1, Y0 = torch.ones(2, dtype=D), torch.zeros(2, dtype=D)


def _logistic(n_train=300, seed=0):
    """Breast-cancer logistic regression with a ridge weight exp(x): strongly convex, L = 3.6, mu = 0.018."""
    from sklearn.datasets import load_breast_cancer

    X, t = load_breast_cancer(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=D)
    t = torch.tensor(t, dtype=D)
    Xtr, ttr, Xv, tv = X[:n_train], t[:n_train], X[n_train:], t[n_train:]

    def lower(lam, w):
        return F.binary_cross_entropy_with_logits(Xtr @ w, ttr) + 0.5 * lam.exp() * (w @ w)

    def upper(lam, w):
        return F.binary_cross_entropy_with_logits(Xv @ w, tv)

    L = float(0.25 * torch.linalg.eigvalsh(Xtr.T @ Xtr / n_train).max() + math.exp(-4.0))
    return upper, lower, torch.tensor(-4.0, dtype=D), torch.zeros(30, dtype=D), L


# ------------------------------------------------------------------------------ diverging inner loops
@pytest.mark.parametrize("steps", [100, 500])
def test_oscillating_inner_loop_warns_and_flags(steps):
    # inner_lr 0.99 > 2/L = 0.96: the iterates oscillate with growing amplitude but stay finite; the
    # hypergradient came back as 9e25 (K = 500) or 1e5 (K = 100) without a word
    with pytest.warns(RuntimeWarning, match=r"inner loop diverges.*lower inner_lr"):
        res = bilevel.hypergrad(quick_upper, quick_lower, X1, Y0, method="rhg", inner_steps=steps, inner_lr=0.99)
    assert res.info["inner_diverged"] is True
    assert torch.isfinite(res.grad).all()


@pytest.mark.parametrize("method", ["rhg", "fhg", "cg", "trhg"])
def test_healthy_inner_loop_is_not_flagged(method):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = bilevel.hypergrad(quick_upper, quick_lower, X1, Y0, method=method, inner_steps=100, inner_lr=0.4)
        # started at the solution (a warm start): both gradient norms are round-off, f does not grow
        ystar = torch.linalg.solve(H2, X1)
        at_opt = bilevel.hypergrad(quick_upper, quick_lower, X1, ystar, method=method, inner_steps=50,
                                   inner_lr=0.4)
    assert res.info["inner_diverged"] is False and at_opt.info["inner_diverged"] is False


def _ridge(n_train=200):
    """Ridge regression on scikit-learn's diabetes data, x = log of the ridge weight; L = lambda_max of the Hessian."""
    from sklearn.datasets import load_diabetes

    X, t = load_diabetes(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=D)
    t = torch.tensor((t - t.mean()) / t.std(), dtype=D)
    Xtr, ttr, Xv, tv = X[:n_train], t[:n_train], X[n_train:], t[n_train:]

    def lower(lam, w):
        return ((Xtr @ w - ttr) ** 2).mean() + lam.exp() * (w @ w)

    def upper(lam, w):
        return ((Xv @ w - tv) ** 2).mean()

    lam = torch.tensor(-3.0, dtype=D)
    L = float(torch.linalg.eigvalsh(2 * Xtr.T @ Xtr / n_train).max() + 2 * math.exp(-3.0))
    return upper, lower, lam, torch.zeros(10, dtype=D), L


def test_diverging_ridge_regression_warns_in_solve():
    upper, lower, lam, w0, L = _ridge()
    with pytest.warns(RuntimeWarning, match="inner loop diverges"):
        out = bilevel.solve(upper, lower, lam, w0, method="rhg", outer_steps=2, outer_lr=0.1, inner_steps=50,
                            inner_lr=2.2 / L)
    assert all(h["inner_diverged"] is True for h in out.history)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ok = bilevel.solve(upper, lower, lam, w0, method="rhg", outer_steps=2, outer_lr=0.1, inner_steps=50,
                           inner_lr=1.0 / L)
    assert not any(h["inner_diverged"] for h in ok.history)


# ------------------------------------------------------------------------------ Neumann residual
def test_neumann_residual_is_the_exact_residual_one_term_before_the_end():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=D)
    H = A @ A.T / 6 + 0.1 * torch.eye(6, dtype=D)
    b = torch.randn(6, generator=g, dtype=D)
    lr = 1.0 / float(torch.linalg.eigvalsh(H).max())
    for J in (1, 2, 7, 30):
        v, info = linear_solve.neumann(lambda u: H @ u, b, terms=J, lr=lr)
        # brute force: the partial sum with J - 1 terms, and its residual b - H v_{J-1}
        partial = sum((lr * torch.linalg.matrix_power(torch.eye(6, dtype=D) - lr * H, j) @ b for j in range(J - 1)),
                      torch.zeros(6, dtype=D))
        expect = float(torch.linalg.vector_norm(b - H @ partial) / torch.linalg.vector_norm(b))
        assert info["residual"] == pytest.approx(expect, rel=1e-10)
        last = lr * torch.linalg.matrix_power(torch.eye(6, dtype=D) - lr * H, J - 1) @ b
        assert info["last_term"] == pytest.approx(float(torch.linalg.vector_norm(last)), rel=1e-10)


def test_neumann_default_warns_when_the_series_has_not_decayed():
    # 20 terms at rate 1 - mu/L = 0.995: the hypergradient is 68 % off the implicit one (CG), which was silent
    upper, lower, lam, w0, L = _logistic()
    cg = bilevel.hypergrad(upper, lower, lam, w0, method="cg", inner_steps=2000, inner_lr=1.0 / L)
    with pytest.warns(RuntimeWarning, match="neumann: last term / first term"):
        res = bilevel.hypergrad(upper, lower, lam, w0, method="neumann", inner_steps=2000, inner_lr=1.0 / L)
    assert abs(float(res.grad - cg.grad)) > 0.3 * abs(float(cg.grad))   # the bias being signalled
    assert res.info["solver_converged"] is False and res.info["solver_residual"] > 0.1
    assert res.info["solver_nonconverged"] == 1
    # enough terms: the residual is small, no warning, and the estimate agrees with CG
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        good = bilevel.hypergrad(upper, lower, lam, w0, method="neumann", inner_steps=2000, inner_lr=1.0 / L,
                                 neumann_terms=1500, neumann_tol=1e-2)
    assert good.info["solver_residual"] <= 1e-2 and good.info["solver_converged"] is True
    assert float(good.grad) == pytest.approx(float(cg.grad), rel=1e-2)


def test_neumann_diverging_series_says_so():
    with pytest.warns(RuntimeWarning, match="series diverges"):
        bilevel.hypergrad(quick_upper, quick_lower, X1, Y0, method="neumann", inner_steps=100, inner_lr=0.4,
                          neumann_lr=1.5)


# ------------------------------------------------------------------------------ CG non-convergence is counted
def test_cg_nonconverged_solves_are_counted_per_step():
    upper, lower, lam, w0, L = _logistic()
    with pytest.warns(RuntimeWarning, match="cg did not converge"):
        out = bilevel.solve(upper, lower, lam, w0, method="cg", outer_steps=4, outer_lr=0.01, inner_steps=300,
                            inner_lr=1.0 / L, cg_steps=2)
    assert [h["solver_nonconverged_steps"] for h in out.history] == [1, 2, 3, 4]
    assert all(h["solver_nonconverged"] == 1 for h in out.history)
    good = bilevel.solve(quick_upper, quick_lower, X1, Y0, method="cg", outer_steps=3, outer_lr=0.01,
                         inner_steps=100, inner_lr=0.4)
    assert [h["solver_nonconverged_steps"] for h in good.history] == [0, 0, 0]


def test_cg_nonconverged_count_survives_a_checkpoint():
    upper, lower, lam, w0, L = _logistic()
    kw = dict(method="cg", outer_lr=0.01, inner_steps=100, inner_lr=1.0 / L, cg_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        loop = bilevel.OuterLoop(lam, w0, **kw)
        loop.step(upper, lower)
        loop.step(upper, lower)
        again = bilevel.OuterLoop(lam, w0, **kw)
        again.load_state_dict(loop.state_dict())
        assert again.step(upper, lower)["solver_nonconverged_steps"] == 3


# ------------------------------------------------------------------------------ half precision
def _spd(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    H = Q @ torch.diag(torch.linspace(1.0, 10.0, n, dtype=D)) @ Q.T
    return H, torch.randn(n, generator=g, dtype=D)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cg_is_accurate(dtype):
    # before: the default tolerance 1000 * eps was 0.98 (fp16) / 7.8 (bf16), CG stopped after one iteration,
    # claimed convergence and the hypergradient was 56 % off
    H, x = _spd()
    ystar = torch.linalg.solve(H, x)
    exact = 2 * torch.linalg.solve(H, ystar - 1)      # grad of ||y*(x) - 1||^2, y* = H^{-1} x
    Hh = H.to(dtype)
    res = bilevel.hypergrad(lambda x, y: ((y - 1.0) ** 2).sum(), lambda x, y: 0.5 * y @ Hh @ y - y @ x,
                            x.to(dtype), ystar.to(dtype), method="cg", inner_steps=1, inner_lr=0.05)
    assert res.grad.dtype == dtype
    err = float((res.grad.double() - exact).abs().max() / exact.abs().max())
    assert err < 0.05, err
    assert res.info["solver_iterations"] > 1 and res.info["solver_residual"] <= 1e-2


def test_default_cg_tolerance_per_dtype():
    assert linear_solve.default_tol(torch.float64) == pytest.approx(1000 * 2.220446049250313e-16)
    assert linear_solve.default_tol(torch.float32) == pytest.approx(1000 * 1.1920928955078125e-07)
    assert linear_solve.default_tol(torch.float16) == 1e-2
    assert linear_solve.default_tol(torch.bfloat16) == 1e-2


def test_half_precision_cg_that_cannot_converge_warns():
    H, x = _spd()
    b = x.to(torch.float16)
    with pytest.warns(RuntimeWarning, match="cg did not converge"):
        _, info = linear_solve.cg(lambda u: (H.to(torch.float16) @ u), b, steps=1)
    assert info["converged"] is False


# ------------------------------------------------------------------------------ silently accepted combinations
LEARNS_INIT = sorted(name for name, m in bilevel.METHODS.items() if m.learns_init)


def test_there_are_methods_that_learn_the_initialization():
    assert {"iaptt", "iagm", "iagm-a"} <= set(LEARNS_INIT)


@pytest.mark.parametrize("method", LEARNS_INIT)
def test_warm_start_with_a_learned_initialization_raises(method):
    with pytest.raises(ValueError, match=rf"warm_start=True cannot be used with method '{method}'"):
        bilevel.solve(quick_upper, quick_lower, X1, Y0, method=method, outer_steps=1, outer_lr=0.1,
                      inner_steps=5, inner_lr=0.4, warm_start=True)
    with pytest.raises(ValueError, match="learns the inner initialization"):
        bilevel.OuterLoop(X1, Y0, method=method, outer_lr=0.1, inner_steps=5, inner_lr=0.4, warm_start=True)


# ------------------------------------------------------------------------------ errors that mislead
def test_solve_keyword_typo_names_solve_and_suggests():
    with pytest.raises(ValueError) as err:
        bilevel.solve(quick_upper, quick_lower, X1, Y0, method="rhg", outer_steps=1, outer_lr=0.1, inner_steps=5,
                      inner_lr=0.4, outer_optimiser="sgd")
    msg = str(err.value)
    assert "not a parameter of solve() either" in msg and "did you mean 'outer_optimiser' -> 'outer_optimizer'" in msg
    assert "unknown option(s) 'outer_optimiser' for method 'rhg'" in msg


def test_hypergrad_and_outerloop_keyword_typos_suggest():
    with pytest.raises(ValueError, match=r"not a parameter of hypergrad\(\) either.*did you mean 'y_bound' -> 'y_bounds'"):
        bilevel.hypergrad(quick_upper, quick_lower, X1, Y0, method="rhg", inner_steps=5, inner_lr=0.4,
                          y_bound=(0, 1))
    with pytest.raises(ValueError, match=r"did you mean 'truncat' -> 'truncate'"):
        bilevel.OuterLoop(X1, Y0, method="trhg", outer_lr=0.1, inner_steps=5, inner_lr=0.4, truncat=2)


def test_per_key_x_bounds_are_accepted_and_x0_is_clamped():
    up = lambda x, y: quick_upper(x["s"], y) + (x["t"] ** 2).sum()   # noqa: E731
    lo = lambda x, y: quick_lower(x["s"], y)                         # noqa: E731
    x0 = {"s": torch.tensor([3.0, -3.0], dtype=D), "t": torch.tensor([7.0], dtype=D)}
    out = bilevel.solve(up, lo, x0, Y0, method="rhg", outer_steps=0, outer_lr=0.1, inner_steps=5, inner_lr=0.4,
                        x_bounds={"s": (-1.0, 0.5)})
    assert torch.equal(out.x["s"], torch.tensor([0.5, -1.0], dtype=D))   # clamped before any step
    assert torch.equal(out.x["t"], x0["t"])                                # a key left out is unbounded
    with pytest.raises(ValueError, match=r"x_bounds=\{'s': \(0.0, 1.0\)\}"):
        bilevel.solve(up, lo, x0, Y0, method="rhg", outer_steps=0, outer_lr=0.1, inner_steps=5, inner_lr=0.4,
                      x_bounds=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="does not have"):
        bilevel.solve(up, lo, x0, Y0, method="rhg", outer_steps=0, outer_lr=0.1, inner_steps=5, inner_lr=0.4,
                      x_bounds={"u": (0.0, 1.0)})


def test_hypergrad_check_repr_is_a_short_summary():
    H, x = _spd(n=30)
    check = bilevel.check_hypergrad(lambda x, y: ((y - 1.0) ** 2).sum(), lambda x, y: 0.5 * y @ H @ y - y @ x,
                                    x, torch.zeros(30, dtype=D), method="rhg", inner_steps=20, inner_lr=0.05)
    text = repr(check)
    assert text.startswith("HypergradCheck(ok=") and "tensor" not in text and len(text) < 120
    assert "directions=30" in text


# ------------------------------------------------------------------------------ the CLI metrics show the counts
def test_run_metrics_carry_the_solver_count(tmp_path):
    from bilevel.app.run.runner import run_task

    cfg = dict(dataset="digits", method="cg", train_size=100, val_size=60, test_size=60, inner_steps=5,
               outer_steps=3, log_every=1, method_options={"cg_steps": 1, "cg_tol": 1e-12})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_task("hyperclean", cfg, tmp_path / "run", quiet=True)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    counts = [ln["info"]["solver_nonconverged_steps"] for ln in lines if "info" in ln]
    assert counts == [1, 2, 3]


@pytest.mark.parametrize("method", ["bda", "bigsam", "bvfim"])
def test_methods_that_also_follow_F_are_not_flagged_when_f_grows(method):
    # from y0 = y*(x) (grad_y f = 0) BDA's aggregation with F moves y away from f's minimizer by design: f grows
    # and ||grad_y f|| grows from 0; that is not divergence
    ystar = torch.linalg.solve(H2, X1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = bilevel.hypergrad(quick_upper, quick_lower, X1, ystar, method=method, inner_steps=20, inner_lr=0.4)
    assert "inner_diverged" not in res.info
    assert bilevel.METHODS[method].descends_lower is False
