"""Random strongly convex quadratic bilevel problems with closed-form hypergradients.

The general family (:func:`make_quadratic`)::

    lower  f(x, y) = 1/2 y'Hy - y'Bx - c'y             y*(x) = H^{-1} (B x + c)
    upper  F(x, y) = 1/2 ||y - a||^2 + lam/2 ||x||^2 + x'Ey

with ``H = A A' / n_y + 1/2 I`` (A Gaussian), so f(x, .) is 1/2-strongly convex, y*(x) is affine in x and the
reduced objective ``phi(x) = F(x, y*(x))`` is a convex quadratic. Its gradient (implicit function theorem,
:func:`ift_closed_form`)::

    grad phi(x) = lam x + E y*(x) + B' H^{-1} ((y*(x) - a) + E' x)

Every hypergradient method must reproduce it (the implicit ones exactly at y*, the unrolled ones as K grows),
which makes the family the reference test case of the core. :func:`make_simple_quadratic` is the special case
``c = 0, E = 0`` used by ``bilevel demo``, with the minimizer of phi in closed form as well; it draws its
random matrices in its own order, so its numbers differ from :func:`make_quadratic`'s for the same seed.

Cost: one ``n_y x n_y`` product and one symmetric eigendecomposition (``O(n_y^3)``) to build; each objective
call is ``O(n_y^2 + n_x n_y)``; :func:`ift_closed_form` solves two ``n_y x n_y`` systems.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Dict, Tuple

import torch

__all__ = ["make_quadratic", "ift_closed_form", "make_simple_quadratic"]


def _check_sizes(n_x: int, n_y: int) -> None:
    for name, n in (("n_x", n_x), ("n_y", n_y)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")


def _spd(g: torch.Generator, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``H = A A' / n + I / 2`` with A drawn from ``g``: symmetric, eigenvalues >= 1/2."""
    A = torch.randn(n, n, generator=g, dtype=dtype)
    return A @ A.T / n + 0.5 * torch.eye(n, dtype=dtype)


def _stable_lr(H: torch.Tensor) -> float:
    """``1 / lambda_max(H)``: a gradient step on ``1/2 y'Hy`` that contracts."""
    return float(1.0 / torch.linalg.eigvalsh(H).max())


def make_quadratic(n_x: int, n_y: int, seed: int, dtype: torch.dtype = torch.float64) -> Dict[str, Any]:
    """A random strongly convex quadratic bilevel problem with closed forms.

    ``f(x, y) = 1/2 y'Hy - y'Bx - c'y``, ``F(x, y) = 1/2 ||y - a||^2 + lam/2 ||x||^2 + x'Ey``.

    Parameters
    ----------
    n_x, n_y : int
        Dimensions of x and y (>= 1).
    seed : int
        Seed of the ``torch.Generator`` that draws, in this order: A, B, c, a, E, x, y0.
    dtype : torch.dtype
        Floating dtype of every tensor.

    Returns
    -------
    dict
        ``H, B, c, a, E`` (tensors), ``lam`` (0.1), ``lower``, ``upper`` (the objectives), ``x`` (a random
        point, shape (n_x,)), ``y0`` (a random start, shape (n_y,)) and ``lr = 1 / lambda_max(H)`` (a stable
        inner step size).

    Raises
    ------
    ValueError
        ``n_x`` or ``n_y`` not an integer >= 1.
    """
    _check_sizes(n_x, n_y)
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    H = _spd(g, n_y, dtype)
    B, c, a, E = r(n_y, n_x), r(n_y), r(n_y), 0.3 * r(n_x, n_y)
    lam = 0.1

    def lower(x, y):
        return 0.5 * y @ H @ y - y @ (B @ x) - c @ y

    def upper(x, y):
        return 0.5 * ((y - a) ** 2).sum() + 0.5 * lam * (x ** 2).sum() + x @ E @ y

    return dict(H=H, B=B, c=c, a=a, E=E, lam=lam, lower=lower, upper=upper, x=r(n_x), y0=r(n_y), lr=_stable_lr(H))


def ift_closed_form(q: Dict[str, Any]) -> torch.Tensor:
    """Implicit-function-theorem hypergradient ``grad phi(x)`` at ``q["x"]`` of a problem from
    :func:`make_quadratic` (two linear solves with H)."""
    H, B, c, x = q["H"], q["B"], q["c"], q["x"]
    y = torch.linalg.solve(H, B @ x + c)
    gy = (y - q["a"]) + q["E"].T @ x
    return q["lam"] * x + q["E"] @ y + B.T @ torch.linalg.solve(H, gy)


def make_simple_quadratic(n_x: int = 5, n_y: int = 20, seed: int = 0
                          ) -> Tuple[Callable, Callable, Callable, torch.Tensor, float]:
    """The quadratic without the linear terms (``c = 0``, ``E = 0``), in float64, with its solution.

    ``f(x, y) = 1/2 y'Hy - y'Bx`` (``y*(x) = H^{-1} B x``), ``F(x, y) = 1/2 ||y - a||^2 + lam/2 ||x||^2``;
    ``grad phi(x) = lam x + B'H^{-1}(y*(x) - a)`` and, with ``S = H^{-1} B``, the minimizer of phi is
    ``x* = (S'S + lam I)^{-1} S'a``. Draws A, B, a (in this order) from ``seed``.

    Returns
    -------
    tuple
        ``(upper, lower, exact_grad, x_star, lr)``: the objectives, ``exact_grad(x)`` (grad phi),
        the minimizer x* of phi (shape (n_x,)) and ``lr = 1 / lambda_max(H)``.

    Raises
    ------
    ValueError
        ``n_x`` or ``n_y`` not an integer >= 1.
    """
    _check_sizes(n_x, n_y)
    g = torch.Generator().manual_seed(seed)
    H = _spd(g, n_y, torch.float64)
    B = torch.randn(n_y, n_x, generator=g, dtype=torch.float64)
    a = torch.randn(n_y, generator=g, dtype=torch.float64)
    lam = 0.1

    def lower(x, y):
        return 0.5 * y @ H @ y - y @ (B @ x)

    def upper(x, y):
        return 0.5 * ((y - a) ** 2).sum() + 0.5 * lam * (x ** 2).sum()

    def exact_grad(x):
        ys = torch.linalg.solve(H, B @ x)
        return lam * x + B.T @ torch.linalg.solve(H, ys - a)

    S = torch.linalg.solve(H, B)
    x_star = torch.linalg.solve(S.T @ S + lam * torch.eye(n_x, dtype=torch.float64), S.T @ a)
    return upper, lower, exact_grad, x_star, _stable_lr(H)
