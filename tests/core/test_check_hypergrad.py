"""check_hypergrad against central finite differences on a non-quadratic problem (breast_cancer, float64)."""
import pytest
import torch
from sklearn.datasets import load_breast_cancer

import bilevel


@pytest.fixture(scope="module")
def logistic():
    X, t = load_breast_cancer(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float64)
    t = torch.tensor(t, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(t), generator=g)
    tr, va = perm[:300], perm[300:]

    def loss(w, idx):
        z = X[idx] @ w["w"] + w["b"]
        return torch.nn.functional.binary_cross_entropy_with_logits(z, t[idx])

    def lower(x, y):  # x: per-feature log weight decay
        return loss(y, tr) + 0.5 * (torch.exp(x) * y["w"] ** 2).sum()

    def upper(x, y):
        return loss(y, va)

    y0 = {"w": torch.zeros(30, dtype=torch.float64), "b": torch.zeros((), dtype=torch.float64)}
    x = torch.full((30,), -3.0, dtype=torch.float64) + 0.5 * torch.randn(30, generator=g, dtype=torch.float64)
    return upper, lower, x, y0


@pytest.mark.parametrize("method", ["rhg", "fhg"])
def test_unrolled_methods_match_finite_differences(logistic, method):
    """Three weight-decay groups (features 0-9, 10-19, 20-29): every coordinate is checked."""
    upper, lower, x, y0 = logistic
    grouped = lambda s, y: lower(s.repeat_interleave(10), y)
    x3 = x[::10].clone()
    chk = bilevel.check_hypergrad(upper, grouped, x3, y0, method=method, inner_steps=40, inner_lr=0.5, rtol=1e-6)
    assert chk.ok, (chk.max_abs_error, chk.max_rel_error)
    assert chk.max_rel_error < 1e-6
    assert chk.fd_derivatives.shape == (3,)
    assert float(chk.fd_derivatives.abs().min()) > 1e-6  # a real signal, not zeros


def test_random_directions_and_scalar_x(logistic):
    upper, lower, x, y0 = logistic
    chk = bilevel.check_hypergrad(upper, lower, x, y0, method="rhg", inner_steps=20, inner_lr=0.5, directions=4,
                                  rtol=1e-6)
    assert chk.ok and chk.method_derivatives.shape == (4,)
    lower1 = lambda s, y: lower(s.expand(30), y)
    chk1 = bilevel.check_hypergrad(upper, lower1, torch.tensor(-2.0, dtype=torch.float64), y0, method="fhg",
                                   inner_steps=30, inner_lr=0.5, rtol=1e-6)
    assert chk1.ok


def test_check_detects_a_biased_estimator(logistic):
    """T-RHG with a 1-step truncation is biased for F(x, y_K): the check must say so."""
    upper, lower, x, y0 = logistic
    chk = bilevel.check_hypergrad(upper, lower, x, y0, method="trhg", inner_steps=40, inner_lr=0.5, truncate=1,
                                  directions=4)
    assert not chk.ok and chk.max_rel_error > 1e-2


def test_implicit_methods_approach_fd_with_many_steps(logistic):
    upper, lower, x, y0 = logistic
    x = torch.full_like(x, -1.0)  # weight decay 0.37: strongly convex, fast inner convergence
    chk = bilevel.check_hypergrad(upper, lower, x, y0, method="cg", inner_steps=300, inner_lr=1.0, rtol=1e-6,
                                  directions=2)
    assert chk.ok, chk.max_rel_error
