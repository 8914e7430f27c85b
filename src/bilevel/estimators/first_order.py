"""First-order meta-gradients: first-order MAML and Reptile (no backpropagation through the unroll).

The inner dynamics run K steps without a tape from y_0 to y_K; then, with y_K held fixed,

* first-order MAML (Finn, Abbeel & Levine, 2017, Sec. 5.2) replaces the unroll's Jacobian by the identity::

      grad_y0 = grad_y F(x, y_K),    grad_x = grad_x F(x, y_K)

* Reptile (Nichol, Achiam & Schulman, 2018) returns the displacement of the inner loop::

      grad_y0 = (y_0 - y_K) / (K s)     (normalize=True; the mean inner gradient for plain GD)
      grad_y0 =  y_0 - y_K              (normalize=False)

  and the same first-order ``grad_x F(x, y_K)`` for x. It is not a gradient of F.

Cost of either: K graph-free steps of the dynamics plus one evaluation and one gradient of F; no
Hessian-vector products; memory O(1) in K (no tape). Used by the ``fomaml`` and ``reptile`` presets
(:mod:`bilevel.methods.meta`).
"""
from __future__ import annotations

import torch

from ..dynamics.base import Dynamics, run
from ..problem import Problem, value_and_grads
from .base import Estimate, check_finite

__all__ = ["first_order_estimate", "reptile_estimate"]


def first_order_estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
                         wrt_init: bool = False) -> Estimate:
    """First-order MAML: the gradients of F at y_K with y_K held fixed (no backpropagation through the unroll).

    Parameters
    ----------
    problem : Problem
    dyn : Dynamics
        The inner dynamics, run without a tape.
    x, y0 : Tensor
        Flat upper variable and initialization (constants).
    steps : int
        K >= 1 inner steps.
    wrt_init : bool
        Return ``grad_y F(x, y_K)`` as the initialization's gradient.

    Returns
    -------
    Estimate
        ``grad_x = grad_x F(x, y_K)``, ``grad_y0 = grad_y F(x, y_K)`` (or None). Cost: K graph-free steps,
        one evaluation and one gradient of F.
    """
    info: dict = {}
    x = x.detach()
    state = run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False, info=info)
    y = state[0].detach()
    upper, gx, gy = value_and_grads(problem.upper, x, y)
    check_finite(upper, f"the upper objective after {steps} inner steps")
    info["upper"] = upper
    return Estimate(gx, gy if wrt_init else None, y, info)


def reptile_estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
                     lr: float, normalize: bool, wrt_init: bool = False) -> Estimate:
    """Reptile: the initialization's update direction ``(y_0 - y_K) / (K lr)`` (or ``y_0 - y_K``).

    Parameters
    ----------
    problem : Problem
    dyn : Dynamics
        The inner dynamics, run without a tape.
    x, y0 : Tensor
        Flat upper variable and initialization (constants).
    steps : int
        K >= 1 inner steps.
    lr : float
        The inner step size s used for the normalization.
    normalize : bool
        Divide the displacement by ``K * lr`` (the mean inner gradient for plain gradient descent).
    wrt_init : bool
        Return the direction as ``grad_y0``.

    Returns
    -------
    Estimate
        ``grad_y0`` as above, ``grad_x = grad_x F(x, y_K)`` (first order; F is used for x and the
        diagnostics only). Cost: K graph-free steps, one evaluation and one gradient of F.
    """
    est = first_order_estimate(problem, dyn, x, y0, steps, wrt_init=False)
    if wrt_init:
        direction = y0.detach() - est.y
        est.grad_y0 = direction / (steps * lr) if normalize else direction
    return est
