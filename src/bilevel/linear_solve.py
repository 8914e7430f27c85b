"""Linear solvers with the signature ``solve(matvec, b) -> (v, info)`` for implicit differentiation.

``matvec(v)`` applies a symmetric positive (semi)definite operator, here the lower-level Hessian
d2f/dy2 through Hessian-vector products; no matrix is ever formed. Any callable with this signature can be
passed to the implicit estimator (``solver=``), in the spirit of swappable linear solves.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

from ._validate import check_float, check_int

MatVec = Callable[[torch.Tensor], torch.Tensor]
SolveInfo = Dict[str, object]

_HALF = (torch.float16, torch.bfloat16)


def default_tol(dtype: torch.dtype) -> float:
    """CG's default relative tolerance: ``1000 * eps(dtype)``, floored at 1e-2 for float16 / bfloat16."""
    tol = 1000.0 * torch.finfo(dtype).eps
    return min(tol, 1e-2) if dtype in _HALF else tol


def cg(matvec: MatVec, b: torch.Tensor, *, steps: int = 100, tol: Optional[float] = None,
       x0: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, SolveInfo]:
    """Conjugate gradient for ``H v = b`` (Hestenes-Stiefel).

    Parameters
    ----------
    matvec : callable
        ``v -> H v`` with H symmetric positive definite.
    b : Tensor
        Right-hand side (1-D).
    steps : int
        Maximum number of iterations (one Hessian-vector product each), >= 1.
    tol : float, optional
        Stop when ``||b - H v|| <= tol * ||b||``. Default :func:`default_tol`: ``1000 * eps(dtype)`` (2.2e-13 in
        float64, 1.2e-4 in float32), floored at 1e-2 for float16 / bfloat16, whose ``1000 * eps`` (0.98 / 7.8)
        would accept any first iterate. Half-precision right-hand sides are solved in float32 (the Hessian-vector
        products stay in the input's dtype) and the solution is cast back.
    x0 : Tensor, optional
        Initial guess (default 0).

    Returns
    -------
    v : Tensor
    info : dict
        ``iterations``, ``residual`` (relative), ``converged``.
    """
    steps = check_int("steps", steps, 1)
    tol = check_float("tol", tol, nonnegative=True, allow_none=True)
    if b.dtype in _HALF:  # iterate in float32: half-precision recurrences lose the residual to rounding
        v, info = cg(lambda u: matvec(u.to(b.dtype)).to(torch.float32), b.to(torch.float32), steps=steps,
                     tol=default_tol(b.dtype) if tol is None else tol,
                     x0=None if x0 is None else x0.to(torch.float32))
        return v.to(b.dtype), info
    if tol is None:
        tol = default_tol(b.dtype)
    bnorm = torch.linalg.vector_norm(b)
    if float(bnorm) == 0.0:
        return torch.zeros_like(b), {"iterations": 0, "residual": 0.0, "converged": True}
    v = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(v) if x0 is not None else b.clone()
    p = r.clone()
    rs = torch.dot(r, r)
    target = (tol * bnorm) ** 2
    it = 0
    for it in range(1, steps + 1):
        hp = matvec(p)
        curv = torch.dot(p, hp)
        if float(curv) <= 0.0:
            warnings.warn("cg: the Hessian is not positive definite along a search direction; stopping early",
                          RuntimeWarning, stacklevel=3)
            break
        a = rs / curv
        v = v + a * p
        r = r - a * hp
        rs_new = torch.dot(r, r)
        if float(rs_new) <= float(target):
            rs = rs_new
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    residual = float(torch.sqrt(rs) / bnorm)
    converged = residual <= tol
    if not converged:
        warnings.warn(f"cg did not converge: relative residual {residual:.3g} > tol {tol:.3g} after {it} "
                      "iterations (raise cg_steps or check that the lower level is strongly convex)",
                      RuntimeWarning, stacklevel=3)
    return v, {"iterations": it, "residual": residual, "converged": converged}


def neumann(matvec: MatVec, b: torch.Tensor, *, terms: int, lr: float,
            tol: Optional[float] = None) -> Tuple[torch.Tensor, SolveInfo]:
    """Truncated Neumann series ``v = eta * sum_{j<J} p_j``, ``p_j = (I - eta H)^j b`` (Lorraine et al., 2020).

    Converges to ``H^{-1} b`` as J grows when ``0 < eta < 2 / lambda_max(H)``, at the rate
    ``1 - eta lambda_min(H)`` per term. Cost: J - 1 Hessian-vector products.

    The last term tells how far the series is from its limit: ``b - H v_{J-1} = p_{J-1}`` exactly, so
    ``residual = ||p_{J-1}|| / ||b||`` (the last term relative to the first) is the relative residual of the sum
    without its last term, free of charge. With ``tol`` set, a residual above it warns (``RuntimeWarning``) and
    reports ``converged`` False: the truncated series is then a biased solve.

    Parameters
    ----------
    matvec : callable
        ``v -> H v`` with H symmetric positive definite.
    b : Tensor
        Right-hand side (1-D).
    terms : int
        J, the number of terms, >= 1.
    lr : float
        eta, > 0.
    tol : float, optional
        Largest acceptable ``residual``, >= 0 (default: no check).

    Returns
    -------
    v : Tensor
    info : dict
        ``iterations`` (J - 1), ``residual``, ``last_term`` (``eta ||p_{J-1}||``) and, with ``tol``,
        ``converged``.
    """
    terms = check_int("terms", terms, 1)
    lr = check_float("lr", lr, positive=True)
    tol = check_float("tol", tol, nonnegative=True, allow_none=True)
    p = b
    acc = b.clone()
    for _ in range(terms - 1):
        p = p - lr * matvec(p)
        acc = acc + p
    bnorm = float(torch.linalg.vector_norm(b))
    pnorm = float(torch.linalg.vector_norm(p))
    residual = pnorm / bnorm if bnorm > 0 else 0.0
    info: SolveInfo = {"iterations": terms - 1, "residual": residual, "last_term": lr * pnorm}
    if tol is not None:
        info["converged"] = residual <= tol
        if not info["converged"]:
            why = ("the series diverges (its terms grow): neumann_lr must be below 2 / lambda_max of the "
                   "lower-level Hessian" if residual > 1.0 else
                   "the series has not decayed: the solve is biased (raise neumann_terms, or use cg)")
            warnings.warn(f"neumann: last term / first term = {residual:.3g} > neumann_tol {tol:.3g} after {terms} "
                          f"terms; {why}", RuntimeWarning, stacklevel=3)
    return lr * acc, info
