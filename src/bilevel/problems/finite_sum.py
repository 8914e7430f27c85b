"""A finite-sum quadratic bilevel problem with known solution: the test bed of :mod:`bilevel.stochastic`.

Per sample i of the lower (training) set and j of the upper (validation) set::

    f_i(x, y) = 1/2 y'A_i y + x'C_i y + a_i'y
    F_j(x, y) = 1/2 y'P_j y + x'D_j y + p_j'y + 1/2 x'R x + r_j'x

The objectives are means over a batch ``idx`` (``None``: all samples). The means ``A, C, a, P, D, p, r`` give::

    y*(x) = -A^{-1} (C'x + a)                       grad h(x) = grad_x F + C v*,   v* = -A^{-1} grad_y F
    grad^2 h = J'PJ + R + DJ + J'D',   J = -A^{-1} C'     x* = -(grad^2 h)^{-1} grad h(0)

``A`` has eigenvalues spaced geometrically in ``[mu, L]``; each ``A_i`` is ``A`` plus a centred symmetric
perturbation of spectral norm ``<= noise * mu`` (so every batch's Hessian lies in ``[(1-noise) mu, L + noise mu]``);
``C`` is small (Gaussian times ``0.2 / sqrt(d_y)``), so that the reduced objective's curvature stays of order 1,
``P = R = I``; ``C_i, a_i, D_j, p_j, r_j`` are their means plus centred Gaussian noise of scale ``noise``. With ``noise=0`` every
batch is the full batch. h is checked to be strongly convex. Cost to build:
``O(n (d_y^2 + d_x d_y))``; each batch evaluation ``O(|idx| (d_y^2 + d_x d_y))``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["FiniteSumQuadratic", "make_finite_sum_quadratic"]


def _centred(t: torch.Tensor) -> torch.Tensor:
    return t - t.mean(0, keepdim=True)


@dataclass(frozen=True)
class FiniteSumQuadratic:
    """The problem's data and closed forms (see the module docstring)."""

    A: torch.Tensor  # (n_lower, d_y, d_y)
    C: torch.Tensor  # (n_lower, d_x, d_y)
    a: torch.Tensor  # (n_lower, d_y)
    P: torch.Tensor  # (n_upper, d_y, d_y)
    D: torch.Tensor  # (n_upper, d_x, d_y)
    p: torch.Tensor  # (n_upper, d_y)
    R: torch.Tensor  # (d_x, d_x)
    r: torch.Tensor  # (n_upper, d_x)

    @property
    def n_lower(self) -> int:
        return self.A.shape[0]

    @property
    def n_upper(self) -> int:
        return self.P.shape[0]

    def lower(self, x: torch.Tensor, y: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        A, C, a = (self.A, self.C, self.a) if idx is None else (self.A[idx], self.C[idx], self.a[idx])
        return 0.5 * y @ A.mean(0) @ y + x @ C.mean(0) @ y + a.mean(0) @ y

    def upper(self, x: torch.Tensor, y: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        P, D, p, r = (self.P, self.D, self.p, self.r) if idx is None else (self.P[idx], self.D[idx], self.p[idx],
                                                                          self.r[idx])
        return 0.5 * y @ P.mean(0) @ y + x @ D.mean(0) @ y + p.mean(0) @ y + 0.5 * x @ self.R @ x + r.mean(0) @ x

    def y_star(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.linalg.solve(self.A.mean(0), self.C.mean(0).T @ x + self.a.mean(0))

    def v_star(self, x: torch.Tensor) -> torch.Tensor:
        """``A^{-1} grad_y F(x, y*(x))`` (the convention of the stochastic solvers: direction ``grad_x F - C v``)."""
        y = self.y_star(x)
        return torch.linalg.solve(self.A.mean(0), self.P.mean(0) @ y + self.D.mean(0).T @ x + self.p.mean(0))

    def hypergrad(self, x: torch.Tensor) -> torch.Tensor:
        y = self.y_star(x)
        fx = self.R @ x + self.D.mean(0) @ y + self.r.mean(0)
        return fx - self.C.mean(0) @ self.v_star(x)

    def hessian(self) -> torch.Tensor:
        J = -torch.linalg.solve(self.A.mean(0), self.C.mean(0).T)
        DJ = self.D.mean(0) @ J
        return J.T @ self.P.mean(0) @ J + self.R + DJ + DJ.T

    def x_star(self) -> torch.Tensor:
        return -torch.linalg.solve(self.hessian(), self.hypergrad(torch.zeros_like(self.r[0])))


def make_finite_sum_quadratic(n_lower: int = 64, n_upper: int = 64, dim_y: int = 5, dim_x: int = 3, *,
                              mu: float = 0.25, L: float = 1.0, noise: float = 0.1, seed: int = 0,
                              dtype: torch.dtype = torch.float64) -> FiniteSumQuadratic:
    """A :class:`FiniteSumQuadratic` drawn from ``seed`` (module docstring)."""
    if not (0 < mu <= L):
        raise ValueError(f"make_finite_sum_quadratic needs 0 < mu <= L, got mu={mu}, L={L}")
    if not (0 <= noise < 1):
        raise ValueError(f"make_finite_sum_quadratic needs 0 <= noise < 1, got {noise}")
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    q, _ = torch.linalg.qr(randn(dim_y, dim_y))
    eig = torch.logspace(math.log10(mu), math.log10(L), dim_y, dtype=dtype)
    A_bar = q @ torch.diag(eig) @ q.T
    S = randn(n_lower, dim_y, dim_y)
    S = _centred(S + S.transpose(1, 2))
    S = S * (noise * mu / torch.linalg.matrix_norm(S, ord=2).max().clamp_min(1e-300))
    A = A_bar + S
    C = 0.2 * randn(dim_x, dim_y) / dim_y ** 0.5 + noise * _centred(randn(n_lower, dim_x, dim_y))
    a = randn(dim_y) + noise * _centred(randn(n_lower, dim_y))
    P_bar = torch.eye(dim_y, dtype=dtype)
    P = P_bar + noise * _centred(torch.stack([(m + m.T) / 2 for m in randn(n_upper, dim_y, dim_y)]))
    D = 0.1 * randn(dim_x, dim_y) / dim_y ** 0.5 + noise * _centred(randn(n_upper, dim_x, dim_y))
    p = randn(dim_y) + noise * _centred(randn(n_upper, dim_y))
    r = randn(dim_x) + noise * _centred(randn(n_upper, dim_x))
    prob = FiniteSumQuadratic(A, C, a, P, D, p, torch.eye(dim_x, dtype=dtype), r)
    lo = float(torch.linalg.eigvalsh(prob.hessian()).min())
    if lo <= 0:
        raise ValueError(f"seed {seed} gave a reduced objective that is not strongly convex (lambda_min {lo:.3g})")
    return prob
