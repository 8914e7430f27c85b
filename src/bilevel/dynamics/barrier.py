"""Backtracking projected gradient descent on a log-barrier objective: the y-loop of BVFIM.

For fixed x and a reference point z (the z-loop's iterate, see :mod:`bilevel.estimators.value_function`),
the objective is

    B(y)   = F(x, y) + theta/2 ||y||^2 - tau ln(gap(y)),
    gap(y) = (f(x, z) - f(x, y)) + margin,        margin = mu1/2 ||z||^2 + mu2,

written this way so that ``gap(z) = margin`` exactly, without cancellation. One step from y, with
``g = grad_y B(y)`` and s = ``lr`` at first, tries ``y+ = P(y - s g)`` and halves s (a *backtrack*) until

* ``gap(y+)`` is a positive finite number (y+ stays inside the barrier's domain), and, with ``armijo=True``,
* ``B(y+) <= B(y) - 1/2 g'(y - y+)`` (projected Armijo rule: sufficient decrease).

After ``max_backtracks`` halvings without success the iterate stays where it is. The log is only ever
evaluated at accepted (feasible) points.

Cost per step: one joint backward pass for ``grad_y B`` (a gradient of F and of f), one evaluation of f per
trial point (1 + the number of halvings) and, with ``armijo``, one more evaluation of F and f per trial point
plus one of B at y. The step is graph-free: it is never differentiated (memory independent of the step count).
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..errors import NonFiniteError
from ..problem import Problem, grad_y
from .base import Dynamics, State, nonfinite_kind

__all__ = ["barrier_gd"]


def _sqnorm(y: torch.Tensor) -> torch.Tensor:
    """``||y||^2`` as ``(y * y).sum()``: the one form every BVFIM term uses (same arithmetic everywhere)."""
    return (y * y).sum()


def barrier_gd(problem: Problem, lr: float, f_z: torch.Tensor, margin: torch.Tensor, theta: float, tau: float,
               max_backtracks: int = 50, armijo: bool = True) -> Dynamics:
    """Projected gradient descent with backtracking on the y-loop's barrier objective (module docstring).

    Parameters
    ----------
    problem : Problem
        Supplies F (``upper``), f (``lower``) and the projection P.
    lr : float
        Initial step s of every step.
    f_z, margin : Tensor
        ``f(x, z)`` and ``mu1/2 ||z||^2 + mu2`` (scalars, constants for this x).
    theta, tau : float
        Tikhonov weight and barrier weight.
    max_backtracks : int
        Maximal number of halvings per step.
    armijo : bool
        Also require sufficient decrease, ``B(y+) <= B(y) - 1/2 g'(y - y+)`` (projected Armijo rule); costs one
        more F and f evaluation per trial point. Default True; False halves only to stay inside the domain
        (cheaper per trial point, but the y-loop then bounces on the barrier and is chaotic: a 1e-13
        change of x0 moves the LLC test problem's result by 0.13 RMS).

    Returns
    -------
    Dynamics
        State ``(y, backtracks)``, ``backtracks`` a 0-d integer tensor counting every halving so far. The step
        raises ValueError when asked for a graph (the step is not differentiable: BVFIM never differentiates
        through its loops) and NonFiniteError when the barrier gradient is not finite.
    """
    upper, lower = problem.upper, problem.lower

    def objective(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gap = (f_z - lower(x, y)) + margin
        return upper(x, y) + 0.5 * theta * _sqnorm(y) - tau * torch.log(gap)

    def init(x: torch.Tensor, y0: torch.Tensor) -> State:
        return (y0, torch.zeros((), dtype=torch.long, device=y0.device))

    def step(k: int, x: torch.Tensor, state: State, create_graph: bool) -> Tuple[State, torch.Tensor]:
        if create_graph:
            raise ValueError("the BVFIM y-loop (backtracking barrier descent) cannot be differentiated; run it "
                             "with create_graph=False")
        y, count = state
        g = grad_y(objective, x, y, False)
        kind = nonfinite_kind(g)
        if kind is not None:
            raise NonFiniteError(f"{kind} in the gradient of the BVFIM barrier objective at y-step {k + 1} "
                                 "(the gap f*_mu - f(x, y) may have collapsed; increase mu2 or reduce y_lr)")
        s = lr
        new = y
        b0 = objective(x, y) if armijo else None
        halvings = 0
        with torch.no_grad():
            for _ in range(max_backtracks + 1):
                cand = problem.project(y - s * g)
                gap = (f_z - lower(x, cand)) + margin
                if bool(torch.isfinite(gap)) and bool(gap > 0):
                    if not armijo or bool(objective(x, cand) <= b0 - 0.5 * (g * (y - cand)).sum()):
                        new = cand
                        break
                s *= 0.5
                halvings += 1
        return (new, count + halvings), g

    return Dynamics(init, step)
