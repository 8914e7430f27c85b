"""BDA's counter-example (Liu et al., ICML 2020, Sec. 2.2, Eq. 5)::

    min_{x in [-100, 100]}  F(x, y) = 1/2 (x - [y]_2)^2 + 1/2 ([y]_1 - 1)^2
    s.t.  y in argmin_{y in R^2}  f(x, y) = 1/2 [y]_1^2 - x [y]_1

Known solution: x* = 1, y* = (1, 1), F* = 0; the lower value is ``f*(x) = min_y f(x, y) = -x^2 / 2``.

Properties: both levels are convex quadratics, but f(x, .) is only convex, not strongly: its Hessian diag(1, 0)
is singular and the lower solution set ``{(x, t): t in R}`` is a line. The optimistic solution picks t = x, which
plain unrolled gradient descent (RHG) never sees ([y]_2 gets no lower-level gradient and stays at its start), so
RHG converges to a wrong x (~0.5 from y0 = (0, 0), ~1.5 from y0 = (2, 2)) while BDA's aggregation of the upper
step pulls [y]_2 towards x. This is why the problem is the standard test of the aggregation methods; CG / Neumann
are undefined on it (singular Hessian). Every map is affine in (x, y), so ``phi_K(x) = F(x, y_K(x))`` is a
quadratic in x for every unrolled method.

Shapes: x of shape (1,), y of shape (2,); any floating dtype. Cost: a handful of scalar operations per call.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["upper", "lower", "lower_value", "X_STAR", "Y_STAR", "F_STAR", "X_BOUNDS", "X0", "Y0"]

#: The optimistic solution: x* = 1, y* = (1, 1), F(x*, y*) = 0.
X_STAR: float = 1.0
Y_STAR: Tuple[float, float] = (1.0, 1.0)
F_STAR: float = 0.0
#: The box of x in the paper.
X_BOUNDS: Tuple[float, float] = (-100.0, 100.0)
#: The standard start (BDA Figs. 2-3): x0 = 0, y0 = (2, 2).
X0: float = 0.0
Y0: Tuple[float, float] = (2.0, 2.0)


def upper(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F(x, y) = 1/2 (x - y_2)^2 + 1/2 (y_1 - 1)^2 (x has one entry, y two)."""
    return 0.5 * (x[0] - y[1]) ** 2 + 0.5 * (y[0] - 1.0) ** 2


def lower(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f(x, y) = 1/2 y_1^2 - x y_1."""
    return 0.5 * y[0] ** 2 - x[0] * y[0]


def lower_value(x: float) -> float:
    """f*(x) = min_y f(x, y) = -x^2 / 2 (attained at [y]_1 = x)."""
    return -0.5 * x * x
