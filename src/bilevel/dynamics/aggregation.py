"""Gradient aggregation: inner steps that mix a lower-level and an upper-level gradient step.

One inner step (j = k + 1 is the 1-based step number, k = 0..K-1 the index of :func:`bilevel.dynamics.run`)
moves along a convex combination of a descent step on the lower objective f and one on the upper objective F:

    d^f_j = s_l grad_y f(x, y_k)                                  (smooth lower level)
    d^f_j = y_k - prox_{s_l g}(y_k - s_l grad_y f(x, y_k))        (lower level f + g, BDA supp. D.2)
    d^F_j = s_u grad_y F(x, y_k)
    y_{k+1} = P( y_k - (w_j d^F_j + (1 - w_j) d^f_j) )

with P the projection onto the lower-level constraint set (``problem.project``), s_l the lower and s_u the
upper step. Two weighting conventions of the same family are supported:

* ``weights="upper"`` -- BDA (Liu et al., 2020, Eq. 10): ``w_j = alpha_j`` weights the *upper* step;
  alpha = 0 is plain (proximal) gradient descent.
* ``weights="lower"`` -- Li, Gu & Huang's Algorithm 1 (their BiG-SAM step, Eq. 13): ``1 - w_j = alpha_j``
  weights the *lower* step, ``omega_{k+1} = alpha theta + (1 - alpha) phi`` with ``theta = omega - t grad h``,
  ``phi = omega - s grad g``; alpha = 1 is plain gradient descent.

With ``every = m > 1`` only the steps j = m, 2m, 3m, ... aggregate; the others are plain (proximal) gradient
steps on f (Li-Gu-Huang's "improved-m" ablation). A step whose upper weight is exactly 0 *is* the
:func:`bilevel.dynamics.gd` step, so such settings reproduce RHG bit for bit.

Cost per aggregated step: one evaluation of f and of F and the backward pass through both (grad_y f and
grad_y F, separately, from one call of the autograd engine), i.e. about twice a plain gradient step; differentiated in reverse mode, two Hessian-vector products' worth more
(one of f, one of F) instead of one. Plain steps cost what :func:`bilevel.dynamics.gd` costs.

The :class:`~bilevel.dynamics.base.Functional` form (for the tape-free engines) has one graph per kind of step
(plain, upper only, mixed, mixed with prox) and the weighted step sizes as its per-step numbers.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch

from .._validate import check_callable, check_float, check_fraction, check_int
from ..problem import Problem, requires_grad_leaf
from .base import Dynamics, Functional
from .gd import Prox, gd

Alpha = Union[float, Callable[[int], Any]]

__all__ = ["aggregation", "alpha_value"]


def alpha_value(alpha: Alpha, j: int, name: str = "alpha") -> float:
    """The weight of the 1-based inner step ``j``: ``alpha`` itself, or ``alpha(j)`` for a schedule.

    Raises ValueError unless the value is a real number in [0, 1] (checked when it is produced).
    """
    if callable(alpha):
        return check_fraction(f"{name}({j})", alpha(j))
    return check_fraction(name, alpha)


def _grads_y(problem: Problem, x: torch.Tensor, y: torch.Tensor, create_graph: bool
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grad_y f(x, y), grad_y F(x, y))`` from one backward pass; zeros for an objective free of y.

    f and F read two aliases (views) of y, so one call of the autograd engine returns the two gradients
    separately (half the engine calls of two ``torch.autograd.grad`` calls; the arithmetic is the same).
    """
    with torch.enable_grad():
        y = requires_grad_leaf(y)
        aliases = (y.view_as(y), y.view_as(y))
        outs = (problem.lower(x, aliases[0]), problem.upper(x, aliases[1]))
        used = [i for i, out in enumerate(outs) if out.requires_grad]
        grads = [None, None]
        if used:
            got = torch.autograd.grad([outs[i] for i in used], [aliases[i] for i in used],
                                      create_graph=create_graph, allow_unused=True)
            for i, g in zip(used, got):
                grads[i] = g
    return tuple(torch.zeros_like(y) if g is None else g for g in grads)


def aggregation(problem: Problem, lower_lr: float, upper_lr: float, alpha: Alpha, *, weights: str = "upper",
                prox: Optional[Prox] = None, every: int = 1) -> Dynamics:
    """Aggregated upper/lower gradient steps (BDA, BiG-SAM-style); see the module docstring.

    Parameters
    ----------
    problem : Problem
        The bilevel problem (flat vectors); ``problem.project`` is applied after every step.
    lower_lr : float
        s_l (BDA) / t (Li-Gu-Huang), > 0.
    upper_lr : float
        s_u (BDA) / s (Li-Gu-Huang), > 0.
    alpha : float or callable
        A weight in [0, 1], or a schedule ``j -> alpha_j`` called with the 1-based step number j of every
        aggregated step; values outside [0, 1] raise ValueError when produced.
    weights : {"upper", "lower"}
        Which step alpha weights: "upper" (BDA) or "lower" (Li-Gu-Huang's BiG-SAM step).
    prox : callable, optional
        ``prox(v, step)`` on the flat vector: proximal map of a nonsmooth lower-level term g, applied inside
        the lower direction as in BDA supplement D.2 (and in every plain step).
    every : int
        Aggregate on steps j = every, 2 every, ...; plain gradient steps otherwise. Default 1 (every step).

    Returns
    -------
    Dynamics
    """
    if weights not in ("upper", "lower"):
        raise ValueError(f"weights must be 'upper' (alpha weights the upper step, BDA) or 'lower' (alpha weights "
                         f"the lower step, BiG-SAM as in Li-Gu-Huang), got {weights!r}")
    s_l = check_float("lower_lr", lower_lr, positive=True)
    s_u = check_float("upper_lr", upper_lr, positive=True)
    every = check_int("every", every, 1)
    if not callable(alpha):
        alpha = alpha_value(alpha, 1)
    prox = check_callable("prox", prox, "prox(v, step)", allow_none=True)
    plain = gd(problem, s_l, prox)

    def init(x, y0):
        return (y0,)

    def coefficients(k):
        """``(form, numbers)`` of step k: "plain" (a gd step), "upper" (the upper step alone), "mix" or "mix_prox"."""
        j = k + 1
        if j % every != 0:
            return "plain", (s_l,)
        a = alpha_value(alpha, j)
        w_up, w_low = (a, 1.0 - a) if weights == "upper" else (1.0 - a, a)
        if w_up == 0.0:
            return "plain", (s_l,)
        if w_low == 0.0:
            return "upper", (s_u,)
        if prox is None:
            return "mix", (w_up * s_u, w_low * s_l)
        return "mix_prox", (w_up * s_u, w_low)

    def body(form, numbers, y, g, g_up):
        # the lower gradient is always returned (diagnostics); it joins the tape only through y_new when w_low != 0
        if form == "upper":
            y_new = y - numbers[0] * g_up
        elif form == "mix":
            y_new = y - (numbers[0] * g_up + numbers[1] * g)
        else:
            y_new = y - (numbers[0] * g_up + numbers[1] * (y - prox(y - s_l * g, s_l)))
        return (problem.project(y_new),), g

    def step(k, x, state, create_graph):
        form, numbers = coefficients(k)
        if form == "plain":
            return plain.step(k, x, state, create_graph)
        # both gradients from one backward pass
        g, g_up = _grads_y(problem, x, state[0], create_graph)
        return body(form, numbers, state[0], g, g_up)

    lower_grad = torch.func.grad(problem.lower, argnums=1)
    upper_grad = torch.func.grad(problem.upper, argnums=1)

    def update(form, x, state, numbers):
        if form == "plain":
            return plain.functional.update(None, x, state, numbers)
        y = state[0]
        return body(form, numbers, y, lower_grad(x, y), upper_grad(x, y))

    return Dynamics(init, step, Functional(coefficients, update))
