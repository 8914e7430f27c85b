"""Linear solvers with the signature ``solve(matvec, b) -> (v, info)`` for implicit differentiation.

``matvec(v)`` applies a symmetric positive (semi)definite operator, here the lower-level Hessian
d2f/dy2 through Hessian-vector products; no matrix is ever formed. Any callable with this signature can be
passed to the implicit estimator (``solver=``), in the spirit of swappable linear solves.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]
SolveInfo = Dict[str, object]


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
        Maximum number of iterations (one Hessian-vector product each).
    tol : float, optional
        Stop when ``||b - H v|| <= tol * ||b||``. Default: ``1000 * eps(dtype)``.
    x0 : Tensor, optional
        Initial guess (default 0).

    Returns
    -------
    v : Tensor
    info : dict
        ``iterations``, ``residual`` (relative), ``converged``.
    """
    if tol is None:
        tol = 1000.0 * torch.finfo(b.dtype).eps
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


def neumann(matvec: MatVec, b: torch.Tensor, *, terms: int, lr: float) -> Tuple[torch.Tensor, SolveInfo]:
    """Truncated Neumann series ``v = eta * sum_{j<J} (I - eta H)^j b`` (Lorraine et al., 2020).

    Converges to ``H^{-1} b`` as J grows when ``0 < eta < 2 / lambda_max(H)``. Cost: J - 1 Hessian-vector
    products, no host synchronisation.
    """
    p = b
    acc = b.clone()
    for _ in range(terms - 1):
        p = p - lr * matvec(p)
        acc = acc + p
    return lr * acc, {"iterations": terms - 1}
