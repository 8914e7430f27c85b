"""The first-order family: methods that update y alongside x and take no Hessian-vector product.

Each carries y across outer steps (``Method.carries_y``): an outer step continues from the y the previous one ended
at, runs the method's y-update at the current x, and returns the x-direction in ``res.grad`` and the y it ends
at in ``res.y``; :class:`bilevel.OuterLoop` steps x with its optimizer and carries y (and the method's own state
across steps, ``Estimate.carry``). s = ``inner_lr``, K = ``inner_steps``.

* ``alternating`` -- plain alternating gradient descent (the hypergradient's implicit term dropped): K steps
  ``y <- y - s grad_y f(x, y)`` from the carried y, then ``d = grad_x F(x, y_K)``
  (:func:`bilevel.estimators.first_order.first_order_estimate`; any ``inner_optimizer``). Cost: K gradients of f,
  one of F. An approximation: biased wherever the follower depends on x.
* ``darts`` -- DARTS (Liu, Simonyan & Yang, 2019): K steps from the carried y to y_K, then the one-step-unroll
  direction with a finite-difference mixed product (:mod:`bilevel.estimators.one_step`); options ``xi`` (the
  look-ahead step, default ``inner_lr``; 0 = first-order DARTS), ``epsilon`` (0.01) and ``exact`` (False).
  Cost: K + 3 gradients of f, one of F; no Hessian-vector product. An approximation of the one-step unroll.
* ``iga`` -- K steps from the carried y, then the gradient-response direction (:mod:`bilevel.estimators.iga`).
* ``bome``, ``vpbgd``, ``f2sa``, ``meha``, ``bamm``, ``gaffo`` -- joint (x, y) steps (:mod:`bilevel.joint`): BOME's
  value-function direction with its adaptive multiplier, V-PBGD's value-gap penalty ``gamma``, F2SA's growing
  multiplier with an auxiliary z, MEHA's Moreau-envelope penalty, BAMM's averaged objective with a multiplier,
  BiC-GAFFA's gap function (lower-level constraints allowed).

See ``docs/methods/<name>.md`` for each method's update, cost and assumptions.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import torch

from .._validate import check_bool
from ..dynamics.optim import inner_optimizer as _dynamics
from ..estimators import iga, one_step, reverse
from ..joint import bamm, bome, f2sa, gaffa, meha, vpbgd
from ..estimators.first_order import first_order_estimate
from ..dynamics.base import with_step_state
from ..problem import Problem
from .registry import Method, Plan, check_float, register

__all__ = ["carried"]


def carried(estimate: Callable[..., Any], value: Callable[..., Any]) -> Plan:
    """A plan for a ``carries_y`` method from ``estimate(x, y, steps, wrt_init, carry)`` and ``value(x, y, steps)``
    (``carry``, the method's state across outer steps, is None at the first step and outside an OuterLoop)."""
    def est(x, y0, steps, wrt_init=False, carry=None):
        return estimate(x, y0, steps, wrt_init, carry)

    return Plan(est, value)


def _alternating(problem: Problem, inner_lr: float, inner_steps: int, *, inner_optimizer: str = "gd",
                 inner_optimizer_options: Optional[dict] = None) -> Plan:
    dyn = with_step_state(_dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options), problem)
    return carried(lambda x, y, steps, wrt_init, carry: first_order_estimate(problem, dyn, x, y, steps),
                   functools.partial(reverse.value, problem, dyn))


def _darts(problem: Problem, inner_lr: float, inner_steps: int, *, xi: Optional[float] = None,
           epsilon: float = 0.01, exact: bool = False, inner_optimizer: str = "gd",
           inner_optimizer_options: Optional[dict] = None) -> Plan:
    look = inner_lr if xi is None else check_float("xi", xi, nonnegative=True)
    eps = check_float("epsilon", epsilon, positive=True)
    ex = check_bool("exact", exact)
    dyn = with_step_state(_dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options), problem)
    return carried(lambda x, y, steps, wrt_init, carry: one_step.estimate(problem, dyn, x, y, steps, xi=look,
                                                                          epsilon=eps, exact=ex, wrt_init=wrt_init),
                   functools.partial(one_step.value, problem, dyn, xi=look))


def _value_at_y(problem: Problem):
    """``(F(x, y), y)`` at the carried y: what the joint methods report as their objective."""
    def value(x, y, steps):
        with torch.no_grad():
            return problem.upper(x.detach(), y.detach()), y.detach()
    return value


def _choice(name: str, value: Any, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _bome(problem: Problem, inner_lr: float, inner_steps: int, *, eta: float = 0.5, phi: str = "grad_norm",
          y_lr: Optional[float] = None) -> Plan:
    opts = {"lr": inner_lr, "eta": check_float("eta", eta, positive=True), "phi": _choice("phi", phi, bome.PHI),
            "y_lr": inner_lr if y_lr is None else check_float("y_lr", y_lr, positive=True)}
    return carried(lambda x, y, steps, wrt_init, carry: bome.step(problem, x, y, steps, carry, **opts),
                   _value_at_y(problem))


def _vpbgd(problem: Problem, inner_lr: float, inner_steps: int, *, gamma: float = 10.0,
           y_lr: Optional[float] = None, yhat_start: str = "carried") -> Plan:
    g = check_float("gamma", gamma, positive=True)
    opts = {"lr": inner_lr, "gamma": g, "yhat_start": _choice("yhat_start", yhat_start, vpbgd.YHAT_START),
            "y_lr": inner_lr / (1.0 + g) if y_lr is None else check_float("y_lr", y_lr, positive=True)}
    return carried(lambda x, y, steps, wrt_init, carry: vpbgd.step(problem, x, y, steps, carry, **opts),
                   _value_at_y(problem))


def _f2sa(problem: Problem, inner_lr: float, inner_steps: int, *, lam: float = 10.0, lam_power: float = 1.0 / 3.0,
          y_lr: Optional[float] = None, y_lr_power: Optional[float] = None) -> Plan:
    lam0 = check_float("lam", lam, positive=True)
    b = check_float("lam_power", lam_power, nonnegative=True)
    opts = {"lr": inner_lr, "lam": lam0, "lam_power": b,
            "y_lr": inner_lr / (1.0 + lam0) if y_lr is None else check_float("y_lr", y_lr, positive=True),
            "y_lr_power": b if y_lr_power is None else check_float("y_lr_power", y_lr_power, nonnegative=True)}
    return carried(lambda x, y, steps, wrt_init, carry: f2sa.step(problem, x, y, steps, carry, **opts),
                   _value_at_y(problem))


def _iga(problem: Problem, inner_lr: float, inner_steps: int, *, inner_optimizer: str = "gd",
         inner_optimizer_options: Optional[dict] = None) -> Plan:
    dyn = with_step_state(_dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options), problem)
    return carried(lambda x, y, steps, wrt_init, carry: iga.estimate(problem, dyn, x, y, steps, wrt_init=wrt_init),
                   functools.partial(reverse.value, problem, dyn))


def _penalty_power(p: Any) -> float:
    """The exponent p of a growing penalty ``c_k = c (k + 1)^p`` (MEHA, BiC-GAFFA): in [0, 1/2)."""
    power = check_float("p", p, nonnegative=True)
    if power >= 0.5:
        raise ValueError(f"p must lie in [0, 1/2) (the penalty c_k = c (k + 1)^p), got {p!r}")
    return power


def _meha(problem: Problem, inner_lr: float, inner_steps: int, *, gamma: float = 1.0, c: float = 1.0,
          p: float = 0.25, y_lr: Optional[float] = None) -> Plan:
    power = _penalty_power(p)
    opts = {"lr": inner_lr, "gamma": check_float("gamma", gamma, positive=True), "c": check_float("c", c, positive=True),
            "p": power, "y_lr": inner_lr if y_lr is None else check_float("y_lr", y_lr, positive=True)}
    return carried(lambda x, y, steps, wrt_init, carry: meha.step(problem, x, y, steps, carry, **opts),
                   _value_at_y(problem))


def _bamm(problem: Problem, inner_lr: float, inner_steps: int, *, mu0: float = 0.9, p: float = 10.0,
          z_lr: Optional[float] = None, line_search: bool = False) -> Plan:
    mu = check_float("mu0", mu0, nonnegative=True)
    if mu >= 1.0:
        raise ValueError(f"mu0 must lie in [0, 1) (the weight of F in mu F + (1 - mu) f), got {mu0!r}")
    power = math.inf if p == math.inf else check_float("p", p, positive=True)  # inf: mu stays mu0
    opts = {"lr": inner_lr, "mu0": mu, "p": power,
            "z_lr": inner_lr if z_lr is None else check_float("z_lr", z_lr, positive=True),
            "line_search": check_bool("line_search", line_search)}
    return carried(lambda x, y, steps, wrt_init, carry: bamm.step(problem, x, y, steps, carry, **opts),
                   _value_at_y(problem))


def _gaffo(problem: Problem, inner_lr: float, inner_steps: int, *, gamma1: float = 1.0, gamma2: float = 1.0,
           c: float = 1.0, p: float = 0.25, r: float = 1e3, y_lr: Optional[float] = None,
           z_lr: Optional[float] = None, ll_constraint: Optional[Callable] = None) -> Plan:
    power = _penalty_power(p)
    if ll_constraint is not None and not callable(ll_constraint):
        raise ValueError(f"ll_constraint must be a callable g(x, y) -> tensor (<= 0 where feasible), got "
                         f"{ll_constraint!r}")
    opts = {"lr": inner_lr, "gamma1": check_float("gamma1", gamma1, positive=True),
            "gamma2": check_float("gamma2", gamma2, positive=True), "c": check_float("c", c, positive=True),
            "p": power, "r": check_float("r", r, positive=True),
            "y_lr": inner_lr if y_lr is None else check_float("y_lr", y_lr, positive=True),
            "z_lr": inner_lr if z_lr is None else check_float("z_lr", z_lr, positive=True),
            "ll_constraint": ll_constraint}
    return carried(lambda x, y, steps, wrt_init, carry: gaffa.step(problem, x, y, steps, carry, **opts),
                   _value_at_y(problem))


register(Method("alternating", _alternating, carries_y=True,
                summary="alternating gradient descent: K steps on y, then grad_x F (no implicit term; first order)"))
register(Method("darts", _darts, carries_y=True,
                summary="DARTS: one-step look-ahead, finite-difference mixed product (first order, no HVP)"))
_JOINT = "a joint (x, y) step of its own"
register(Method("bome", _bome, carries_y=True, descends_lower=False, own_dynamics=_JOINT,
                summary="BOME: value-function direction with an adaptive multiplier, joint (x, y) step (first order)"))
register(Method("vpbgd", _vpbgd, carries_y=True, descends_lower=False, own_dynamics=_JOINT,
                summary="V-PBGD: value-gap penalty gamma, joint (x, y) step (first order)"))
register(Method("f2sa", _f2sa, carries_y=True, descends_lower=False, own_dynamics=_JOINT,
                summary="F2SA: growing multiplier, y and auxiliary z carried (fully first order)"))
register(Method("iga", _iga, carries_y=True,
                summary="IGA: K steps on y, then the gradient-response direction (rank-one implicit term; no HVP)"))
register(Method("meha", _meha, carries_y=True, descends_lower=False, own_dynamics=_JOINT,
                summary="MEHA: Moreau-envelope penalty with growing c_k, single loop, Hessian-free"))
register(Method("bamm", _bamm, carries_y=True, descends_lower=False, own_dynamics=_JOINT,
                summary="BAMM: averaged mu F + (1 - mu) f with mu -> 0 and a multiplier z (single loop; one HVP)"))
register(Method("gaffo", _gaffo, carries_y=True, descends_lower=False, own_dynamics=_JOINT,
                summary="BiC-GAFFA: regularized gap function, lower-level constraints allowed (first order)"))
