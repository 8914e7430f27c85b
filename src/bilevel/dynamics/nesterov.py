"""Nesterov-accelerated (FISTA) projected/proximal gradient descent on the lower level.

IAPTT-GM (Liu et al., NeurIPS 2021), Eq. 9, with the standard FISTA sequence (Beck & Teboulle, 2009)::

    y_0 = z,   u_0 = y_0,   t_0 = 1,   t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2,
    y_{k+1} = P( prox_{s g}( u_k - s * grad_y f(x, u_k) ) ),
    u_{k+1} = y_{k+1} + ((t_k - 1) / t_{k+1}) (y_{k+1} - y_k),

s = ``lr``, P the projection onto the lower-level constraint set, ``prox`` an optional proximal map. The
paper prints ``sqrt(1 + t_k^2)`` and indexes ``u`` inconsistently; the recursion above is the standard
one, whose ``O(1/k^2)`` rate Theorem 3.4 relies on. Written with the state ``(y_k, y_{k-1})`` the step
``k`` forms ``u_k = y_k + beta_k (y_k - y_{k-1})`` with ``beta_0 = 0`` and ``beta_k = (t_{k-1} - 1) / t_k``
(so ``beta_1 = 0`` too): the momentum depends on ``k`` only and is not stored in the state. A constant
``momentum`` replaces ``beta_k`` by a fixed number (constant-momentum Nesterov for strongly convex
followers); it is 0 at ``k = 0``, where ``y_{-1} = y_0``.

Cost per step: one evaluation of f and one backward pass at ``u_k`` (plus a Hessian-vector product's
worth when the step is differentiated in reverse mode), i.e. the same as :func:`bilevel.dynamics.gd`;
the state holds two iterates instead of one.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from .._validate import check_interval, check_step_index
from ..problem import Problem, grad_y
from .base import Dynamics, State
from .gd import Prox

__all__ = ["nesterov", "fista_momentum"]

_T_CACHE: List[float] = [1.0]


def _t(k: int) -> float:
    """The FISTA sequence ``t_k`` (``t_0 = 1``), memoised: a function of ``k`` only."""
    while len(_T_CACHE) <= k:
        t = _T_CACHE[-1]
        _T_CACHE.append((1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0)
    return _T_CACHE[k]


def fista_momentum(k: int) -> float:
    """Momentum ``beta_k`` used at inner step ``k`` (0-based): 0 for k = 0, else ``(t_{k-1} - 1) / t_k``.

    Parameters
    ----------
    k : int
        Inner step index, ``k >= 0``.

    Returns
    -------
    float
        The extrapolation coefficient in ``u_k = y_k + beta_k (y_k - y_{k-1})``; it increases from 0
        towards 1 (``beta_k ~ 1 - 3/k``).
    """
    k = check_step_index(k, first=0)
    if k == 0:
        return 0.0
    return (_t(k - 1) - 1.0) / _t(k)


def nesterov(problem: Problem, lr: float, prox: Optional[Prox] = None,
             momentum: Optional[float] = None) -> Dynamics:
    """Accelerated projected/proximal gradient descent on ``problem.lower`` with step ``lr``.

    Parameters
    ----------
    problem : Problem
        The bilevel problem; ``problem.lower`` is minimized over y and ``problem.project`` applied.
    lr : float
        Step size ``s`` (``1 / L_f`` in Theorem 3.4).
    prox : callable, optional
        Proximal map ``prox(v, s)`` of a nonsmooth lower-level term, applied before the projection.
    momentum : float, optional
        None (default): the FISTA schedule :func:`fista_momentum`. A number in ``[0, 1)``: that constant
        extrapolation coefficient at every step ``k >= 1`` (0 gives plain gradient descent).

    Returns
    -------
    Dynamics
        State ``(y_k, y_{k-1})``; ``step`` returns the lower-level gradient at the extrapolated ``u_k``.
    """
    momentum = check_interval("momentum", momentum, 0.0, 1.0, open_high=True, allow_none=True)

    def beta(k: int) -> float:
        if momentum is None:
            return fista_momentum(k)
        return 0.0 if k == 0 else momentum

    def init(x: torch.Tensor, y0: torch.Tensor) -> State:
        return (y0, y0)

    def step(k: int, x: torch.Tensor, state: State, create_graph: bool):
        y, y_prev = state[0], state[1]
        b = beta(k)
        u = y if b == 0.0 else y + b * (y - y_prev)
        g = grad_y(problem.lower, x, u, create_graph)
        y_new = u - lr * g
        if prox is not None:
            y_new = prox(y_new, lr)
        return (problem.project(y_new), y), g

    return Dynamics(init, step)
