"""IAPTT-GM's toy without lower-level convexity (Liu et al., NeurIPS 2021, Sec. 4.1, Eq. 10)::

    min_{x in [1, 10]}  F(x, y) = x + x y
    s.t.  y in argmin_{y in [-2, 2]}  f(x, y) = -sin(x y)

Known solution: the unique optimistic solution (x*, y*) = (11 pi / 4, -2), F* = -11 pi / 4; the lower value is
``f*(x) = -1`` for every x in [1, 10] (the box [-2, 2] always contains a y with x y = pi / 2 + 2 pi m).

Properties: f(x, .) is nonconvex with several minimizers in the box, so the lower solution set is not a
singleton and gradient descent reaches whichever local minimizer its start leads to. Methods that trust the last
iterate (RHG) or assume a unique lower solution (CG, Neumann) miss x*; IA-GM stops at the local solution
7 pi / 4 from (x0, y0) = (7, -1). It is the test of pessimistic trajectory truncation (``"iaptt"``) and of
learning the initialization. F and f are written as sums so that x, y of equal shape hold independent copies.

Cost: a few elementwise operations per call.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

__all__ = ["upper", "lower", "lower_value", "X_STAR", "Y_STAR", "F_STAR", "X_BOUNDS", "Y_BOUNDS", "INITS"]

X_STAR: float = 11 * math.pi / 4
Y_STAR: float = -2.0
F_STAR: float = -11 * math.pi / 4
#: The boxes of x and y in the paper.
X_BOUNDS: Tuple[float, float] = (1.0, 10.0)
Y_BOUNDS: Tuple[float, float] = (-2.0, 2.0)
#: The paper's three initializations (x0, y0) of Fig. 1; the first is the standard start.
INITS: Tuple[Tuple[float, float], ...] = ((1.0, 2.0), (5.0, 1.0), (7.0, -1.0))


def upper(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``F(x, y) = sum(x + x y)`` (Eq. 10; a sum of independent copies when x, y are vectors)."""
    return (x + x * y).sum()


def lower(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f(x, y) = -sum(sin(x y))`` (Eq. 10)."""
    return -torch.sin(x * y).sum()


def lower_value(x: float) -> float:
    """f*(x) = min_{y in [-2, 2]} f(x, y) = -1 for x in [1, 10]."""
    return -1.0
