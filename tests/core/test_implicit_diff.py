"""custom_root: implicit differentiation of an arbitrary solver equals autograd through a closed form."""
import torch

import bilevel
from bilevel.implicit_diff import custom_root


def _ridge_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(30, 5, generator=g, dtype=torch.float64)
    t = torch.randn(30, generator=g, dtype=torch.float64)
    Xv = torch.randn(20, 5, generator=g, dtype=torch.float64)
    tv = torch.randn(20, generator=g, dtype=torch.float64)
    return X, t, Xv, tv


def test_custom_root_matches_autograd_through_the_closed_form():
    X, t, Xv, tv = _ridge_data()
    closed = lambda lam: torch.linalg.solve(X.T @ X + lam * torch.eye(5, dtype=X.dtype), X.T @ t)

    @custom_root(lambda lam, w: X.T @ (X @ w - t) + lam * w)
    def ridge(lam):
        w = torch.zeros(5, dtype=X.dtype)          # a solver autograd could not follow cheaply:
        for _ in range(3000):                      # plain gradient descent to convergence
            w = w - 0.01 * (X.T @ (X @ w - t) + lam * w)
        return w

    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    loss = ((Xv @ ridge(lam) - tv) ** 2).mean()
    (g,) = torch.autograd.grad(loss, lam)
    lam2 = lam.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(((Xv @ closed(lam2) - tv) ** 2).mean(), lam2)
    assert torch.allclose(g, ref, rtol=1e-8)


def test_custom_root_with_dict_variables():
    X, t, Xv, tv = _ridge_data(1)

    def optimality(h, w):
        r = X @ w["w"] + w["b"] - t
        return {"w": X.T @ r + h["lam"] * w["w"], "b": r.sum()}

    @custom_root(optimality)
    def solver(h):
        A = torch.cat([X, torch.ones(30, 1, dtype=X.dtype)], 1)
        reg = torch.diag(torch.cat([h["lam"].expand(5), torch.zeros(1, dtype=X.dtype)]))
        v = torch.linalg.solve(A.T @ A + reg, A.T @ t)
        return {"w": v[:5], "b": v[5]}

    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = solver({"lam": lam})
    assert set(out) == {"w", "b"}
    (g,) = torch.autograd.grad(((Xv @ out["w"] + out["b"] - tv) ** 2).mean(), lam)

    lam2 = lam.detach().clone().requires_grad_()
    A = torch.cat([X, torch.ones(30, 1, dtype=X.dtype)], 1)
    reg = torch.diag(torch.cat([lam2.expand(5), torch.zeros(1, dtype=X.dtype)]))
    v = torch.linalg.solve(A.T @ A + reg, A.T @ t)
    (ref,) = torch.autograd.grad(((Xv @ v[:5] + v[5] - tv) ** 2).mean(), lam2)
    assert torch.allclose(g, ref, rtol=1e-8)


def test_swappable_solver_neumann():
    X, t, Xv, tv = _ridge_data(2)
    H = X.T @ X
    eta = float(1.0 / torch.linalg.eigvalsh(H + torch.eye(5, dtype=X.dtype)).max())
    neumann = lambda mv, b: bilevel.linear_solve.neumann(mv, b, terms=4000, lr=eta)
    closed = lambda lam: torch.linalg.solve(H + lam * torch.eye(5, dtype=X.dtype), X.T @ t)
    ridge = custom_root(lambda lam, w: X.T @ (X @ w - t) + lam * w, solve=neumann)(closed)
    lam = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(((Xv @ ridge(lam) - tv) ** 2).mean(), lam)
    lam2 = lam.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(((Xv @ closed(lam2) - tv) ** 2).mean(), lam2)
    assert torch.allclose(g, ref, rtol=1e-7)
