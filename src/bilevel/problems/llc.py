"""IAPTT-GM's problem without lower-level convexity in y2 ("LLC problem"; Liu et al., NeurIPS 2021, Sec. 4.3,
Eq. 13)::

    min_{x in [-100, 100]^n}  F(x, y) = ||x - y2||^4 + ||y1 - e||^4
    s.t.  y = (y1, y2) in argmin_y  f(x, y) = 1/2 ||y1||^2 - x'y1

with ``e = (1, ..., 1)``. Known solution: x* = y1* = y2* = e, F* = 0; ``f*(x) = -||x||^2 / 2``.

Properties: f(x, .) is convex but not strongly (y2 does not enter f: the lower solution set is the affine set
``{(x, t): t in R^n}``), and F is a quartic, flat near the solution. As in BDA's counter-example the optimistic
solution needs y2 = x, which the lower level never moves, so it tests the methods for non-singleton followers
(BDA, IA-GM(A), BVFIM) in n dimensions (the paper uses n = 50).

Two layouts of y, with the same arithmetic: ``"stacked"`` -- one vector of length 2n, y1 = y[:n], y2 = y[n:];
``"dict"`` -- ``{"y1": (n,), "y2": (n,)}``. float64 (e is built in float64). Cost: O(n) per call.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch

__all__ = ["llc_problem", "X_STAR", "X_BOUNDS", "LAYOUTS"]

#: Every coordinate of x*, y1* and y2*.
X_STAR: float = 1.0
#: The box of every coordinate of x in the paper.
X_BOUNDS: Tuple[float, float] = (-100.0, 100.0)
LAYOUTS = ("stacked", "dict")


def llc_problem(n: int, layout: str = "stacked") -> Tuple[Callable, Callable]:
    """The objectives ``(upper, lower)`` of Eq. 13 in dimension n.

    Parameters
    ----------
    n : int
        Dimension of x, y1 and y2 (>= 1).
    layout : {"stacked", "dict"}
        ``"stacked"``: y is one vector of length 2n, ``(y1, y2) = (y[:n], y[n:])``; ``"dict"``: y is
        ``{"y1": ..., "y2": ...}``.

    Returns
    -------
    tuple
        ``(upper, lower)``, functions of ``(x, y)`` with x of shape (n,).

    Raises
    ------
    ValueError
        ``n < 1`` or an unknown layout.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    e = torch.ones(n, dtype=torch.float64)

    if layout == "stacked":
        def upper(x, y):
            return ((x - y[n:]) ** 2).sum() ** 2 + ((y[:n] - e) ** 2).sum() ** 2

        def lower(x, y):
            return 0.5 * (y[:n] ** 2).sum() - x @ y[:n]
    else:
        def upper(x, y):
            return ((x - y["y2"]) ** 2).sum() ** 2 + ((y["y1"] - e) ** 2).sum() ** 2

        def lower(x, y):
            return 0.5 * (y["y1"] ** 2).sum() - x @ y["y1"]

    return upper, lower
