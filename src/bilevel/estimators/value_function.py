"""BVFIM: value-function-based interior-point hypergradient (Liu, Liu, Yuan, Zeng & Zhang, ICML 2021;
supplement, Proposition 1).

The lower-level constraint ``y in argmin f(x, .)`` is replaced by the value-function inequality
``f(x, y) <= f*(x)``, relaxed and turned into a log barrier:

    z*_mu(x)   = argmin_y  f(x, y) + mu1/2 ||y||^2                                  (z-loop)
    f*_mu(x)   = f(x, z*_mu(x)) + mu1/2 ||z*_mu(x)||^2 + mu2
    y*(x)      = argmin_y  F(x, y) + theta/2 ||y||^2 - tau ln(f*_mu(x) - f(x, y))   (y-loop)
    phi(x)     = F(x, y*(x)) + theta/2 ||y*(x)||^2 - tau ln(f*_mu(x) - f(x, y*(x)))

and, when both minimizers are unique (Proposition 1, by Danskin's theorem twice),

    d phi / dx = grad_x F(x, y*) + tau (grad_x f(x, y*) - grad_x f(x, z*)) / (f*_mu(x) - f(x, y*)).

The estimator approximates z* by ``z_steps`` projected gradient steps from ``y0`` and y* by ``y_steps``
projected gradient steps started at ``z`` (strictly feasible: the gap there is mu1/2 ||z||^2 + mu2 >= mu2),
backtracking (halving) any y step that would leave the barrier's domain. The formula is then evaluated at
the final (z, y). This is the gradient of the barrier-penalized objective :func:`penalized_objective` with
respect to x at *fixed* (y, z) -- it never differentiates through either loop.

The y-loop's dynamics is :func:`bilevel.dynamics.barrier_gd` (re-exported here). The step counts, step sizes,
weights and backtracking rule travel together in one frozen :class:`BVFIMSettings`, validated at construction.

Cost per call: ``z_steps`` gradients of f, ``y_steps`` gradients of F + f (one joint backward pass each)
plus one f evaluation per trial point (1 + the number of backtracks), and three first-order gradients
for the formula. No Hessian-vector product and no tape across steps: memory independent of the step counts.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, NamedTuple, Tuple

import torch

from .._validate import check_bool, check_float, check_int
from ..dynamics.barrier import _sqnorm, barrier_gd
from ..dynamics.base import run
from ..dynamics.gd import gd
from ..problem import Problem, value_and_grads
from .base import Estimate, check_finite

__all__ = ["BVFIMSettings", "Loops", "regularized_lower", "barrier_gd", "inner_loops", "estimate", "value",
           "penalized_objective", "hypergradient_at"]


@dataclasses.dataclass(frozen=True)
class BVFIMSettings:
    """Everything that fixes one BVFIM estimate besides (problem, x, y0), validated once at construction.

    Attributes
    ----------
    z_steps : int
        Gradient steps of the z-loop on ``f + mu1/2 ||y||^2`` (>= 1).
    y_steps : int
        Backtracking barrier steps of the y-loop (>= 0; 0 gives y = z).
    z_lr : float
        Step of the z-loop (finite, > 0).
    y_lr : float
        Initial step of every y step (finite, > 0).
    mu1, theta : float
        Tikhonov weights of the z- and y-objectives (finite, >= 0).
    mu2 : float
        Relaxation of the value-function constraint (finite, > 0).
    tau : float
        Barrier weight (finite, > 0).
    max_backtracks : int
        Maximal halvings of a y step (>= 0; default 50).
    armijo : bool
        Halve a y step also until the barrier objective decreases sufficiently (default True; see
        :func:`bilevel.dynamics.barrier.barrier_gd`).

    Raises
    ------
    ValueError
        Naming the first field out of range (the checks of :mod:`bilevel._validate`). The float fields are
        stored as Python floats.
    """

    z_steps: int
    y_steps: int
    z_lr: float
    y_lr: float
    mu1: float
    mu2: float
    theta: float
    tau: float
    max_backtracks: int = 50
    armijo: bool = True

    def __post_init__(self) -> None:
        check_int("z_steps", self.z_steps, 1)
        check_int("y_steps", self.y_steps, 0)
        for name in ("z_lr", "y_lr", "mu1", "mu2", "theta", "tau"):
            nonnegative = name in ("mu1", "theta")  # the Tikhonov weights may be 0, the others not
            v = check_float(name, getattr(self, name), positive=not nonnegative, nonnegative=nonnegative)
            object.__setattr__(self, name, v)  # frozen: store the validated float once, here
        check_int("max_backtracks", self.max_backtracks, 0)
        check_bool("armijo", self.armijo)


def regularized_lower(problem: Problem, mu1: float) -> Problem:
    """The problem whose lower objective is ``f(x, y) + mu1/2 ||y||^2`` (the z-loop's objective).

    Parameters
    ----------
    problem : Problem
        The original problem.
    mu1 : float
        Tikhonov weight (>= 0).

    Returns
    -------
    Problem
        A copy of ``problem`` (same projection and structures) with the regularized lower objective.
    """
    lower = problem.lower

    def reg(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lower(x, y) + 0.5 * mu1 * _sqnorm(y)

    return dataclasses.replace(problem, lower=reg)


class Loops(NamedTuple):
    """The result of the z-loop and the y-loop at one x (all detached).

    Attributes
    ----------
    z, y : Tensor
        Final iterates of the z-loop and of the y-loop (flat).
    f_z : Tensor
        ``f(x, z)``.
    margin : Tensor
        ``mu1/2 ||z||^2 + mu2`` (so ``f*_mu = f_z + margin``).
    info : dict
        Diagnostics of the loops.
    """

    z: torch.Tensor
    y: torch.Tensor
    f_z: torch.Tensor
    margin: torch.Tensor
    info: Dict[str, object]


def inner_loops(problem: Problem, x: torch.Tensor, y0: torch.Tensor, settings: BVFIMSettings) -> Loops:
    """Run the z-loop from ``y0`` and the y-loop from its result, graph-free.

    Parameters
    ----------
    problem : Problem
        The bilevel problem (flat).
    x, y0 : Tensor
        Upper variable and the z-loop's initialization (constants).
    settings : BVFIMSettings
        Step counts, step sizes, weights and backtracking rule of both loops.

    Returns
    -------
    Loops

    Raises
    ------
    ValueError
        If ``settings`` is not a :class:`BVFIMSettings` or the y-loop's start is not strictly feasible
        (``mu1/2 ||z||^2 + mu2`` not a positive finite number, e.g. mu2 underflowed).
    NonFiniteError
        If an iterate, f(x, z) or the barrier gradient becomes nan/inf.
    """
    if not isinstance(settings, BVFIMSettings):
        raise ValueError(f"settings must be a BVFIMSettings, got {type(settings).__name__}")
    x = x.detach()
    info: Dict[str, object] = {}
    zprob = regularized_lower(problem, settings.mu1)
    zdyn = gd(zprob, settings.z_lr)
    zinfo: Dict[str, object] = {}
    z = run(zdyn, x, zdyn.init(x, y0.detach()), 0, settings.z_steps, create_graph=False, info=zinfo)[0].detach()
    with torch.no_grad():
        f_z = check_finite(problem.lower(x, z), f"f(x, z) after {settings.z_steps} z-steps").detach()
        margin = 0.5 * settings.mu1 * _sqnorm(z) + settings.mu2
    if not (bool(torch.isfinite(margin)) and bool(margin > 0)):
        raise ValueError(f"infeasible start of the BVFIM y-loop: f*_mu - f(x, z) = mu1/2 ||z||^2 + mu2 = "
                         f"{float(margin)} must be a positive finite number (mu2 = {settings.mu2}); use a larger mu2 "
                         "(or fewer outer steps / a decay closer to 1 so that mu2 does not underflow)")
    info["lower_grad_norm_first"] = zinfo.get("lower_grad_norm_first")
    info["lower_grad_norm_last"] = zinfo.get("lower_grad_norm_last")
    ydyn = barrier_gd(problem, settings.y_lr, f_z, margin, settings.theta, settings.tau, settings.max_backtracks,
                      settings.armijo)
    yinfo: Dict[str, object] = {}
    y, backtracks = run(ydyn, x, ydyn.init(x, z), 0, settings.y_steps, create_graph=False, info=yinfo)
    if settings.y_steps > 0:
        info["y_grad_norm_first"] = yinfo["lower_grad_norm_first"]
        info["y_grad_norm_last"] = yinfo["lower_grad_norm_last"]
    info["backtracks"] = int(backtracks)
    return Loops(z, y.detach(), f_z, margin.detach(), {k: v for k, v in info.items() if v is not None})


def hypergradient_at(problem: Problem, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, f_z: torch.Tensor,
                     margin: torch.Tensor, tau: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Proposition 1's formula at given (y, z): ``grad_x F(x,y) + tau (grad_x f(x,y) - grad_x f(x,z)) / gap``.

    ``gap = (f(x, z) - f(x, y)) + margin``. Three first-order gradients, no second derivatives.

    Parameters
    ----------
    problem : Problem
    x, y, z : Tensor
        Flat upper variable, y-loop and z-loop iterates.
    f_z, margin : Tensor
        ``f(x, z)`` and ``mu1/2 ||z||^2 + mu2``.
    tau : float
        Barrier weight.

    Returns
    -------
    grad : Tensor
        The hypergradient (flat).
    parts : dict
        ``upper`` F(x, y), ``y_lower`` f(x, y) and ``gap``.

    Raises
    ------
    ValueError
        If the gap is not a positive finite number at y (the formula is undefined there).
    """
    F_y, gF, _ = value_and_grads(problem.upper, x, y)
    f_y, gf_y, _ = value_and_grads(problem.lower, x, y)
    _, gf_z, _ = value_and_grads(problem.lower, x, z)
    gap = (f_z - f_y) + margin
    if not (bool(torch.isfinite(gap)) and bool(gap > 0)):
        raise ValueError(f"the BVFIM gap f*_mu - f(x, y) = {float(gap)} is not a positive finite number at the "
                         "y-loop's iterate; the hypergradient is only defined strictly inside the barrier")
    grad = gF + tau * (gf_y - gf_z) / gap
    return grad, {"upper": F_y, "y_lower": f_y, "gap": gap}


def estimate(problem: Problem, x: torch.Tensor, y0: torch.Tensor, settings: BVFIMSettings, *,
             wrt_init: bool = False) -> Estimate:
    """BVFIM hypergradient at x (Proposition 1 at the loops' final iterates).

    Parameters
    ----------
    problem : Problem
    x, y0 : Tensor
        Flat upper variable and z-loop initialization.
    settings : BVFIMSettings
        See :func:`inner_loops`.
    wrt_init : bool
        Must be False (BVFIM does not differentiate its initialization).

    Returns
    -------
    Estimate
        ``y`` is the y-loop's final iterate. ``info``: ``upper`` F(x, y), ``gap`` f*_mu - f(x, y),
        ``z_lower`` f(x, z), ``f_star_mu`` f*_mu, ``penalized`` the barrier objective at (y, z),
        ``backtracks`` (halvings in the y-loop), ``mu1``, ``mu2``, ``theta``, ``tau``, ``z_steps``,
        ``y_steps``, ``lower_grad_norm_first/last`` (z-loop, regularized f) and ``y_grad_norm_first/last``
        (y-loop, barrier objective).
    """
    if wrt_init:
        raise ValueError("bvfim does not differentiate the initialization (wrt_init must be False)")
    loops = inner_loops(problem, x, y0, settings)
    x = x.detach()
    grad, parts = hypergradient_at(problem, x, loops.y, loops.z, loops.f_z, loops.margin, settings.tau)
    check_finite(parts["upper"], "the upper objective at the y-loop's iterate (reduce y_lr or pass armijo=True)")
    info = dict(loops.info)
    info.update(
        upper=parts["upper"], gap=parts["gap"], z_lower=loops.f_z, f_star_mu=loops.f_z + loops.margin,
        penalized=parts["upper"] + 0.5 * settings.theta * _sqnorm(loops.y) - settings.tau * torch.log(parts["gap"]),
        mu1=settings.mu1, mu2=settings.mu2, theta=settings.theta, tau=settings.tau, z_steps=settings.z_steps,
        y_steps=settings.y_steps)
    return Estimate(grad, None, loops.y, info)


def value(problem: Problem, x: torch.Tensor, y0: torch.Tensor,
          settings: BVFIMSettings) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(F(x, y), y)`` at the y-loop's final iterate y (no tape).

    This is the upper objective the method is driving down, *not* a function whose gradient
    :func:`estimate` returns: the estimate is the gradient of the barrier-penalized value function
    (exactly, at fixed (y, z): see :func:`penalized_objective`), so finite differences of this value measure
    the bias of BVFIM with respect to F(x, y(x)), which vanishes only as mu1, mu2, theta, tau -> 0.
    """
    loops = inner_loops(problem, x, y0, settings)
    with torch.no_grad():
        return problem.upper(x.detach(), loops.y), loops.y


def penalized_objective(problem: Problem, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, *, mu1: float,
                        mu2: float, theta: float, tau: float) -> torch.Tensor:
    """The barrier-penalized reformulation at fixed (y, z), differentiable in x:

    ``F(x, y) + theta/2 ||y||^2 - tau ln(f(x, z) + mu1/2 ||z||^2 + mu2 - f(x, y))``.

    Its gradient in x at fixed (y, z) is exactly the BVFIM hypergradient (Proposition 1's formula). When z
    and y are the exact minimizers it is phi_{mu,theta,tau}(x) and, by Danskin's theorem, the same formula
    is its total derivative.

    Parameters
    ----------
    problem : Problem
    x, y, z : Tensor
        Flat variables (x may require grad; y and z are used as given).
    mu1, mu2, theta, tau : float

    Returns
    -------
    Tensor
        A scalar; raises ValueError if the log's argument is not positive.
    """
    gap = (problem.lower(x, z) - problem.lower(x, y)) + (0.5 * mu1 * _sqnorm(z) + mu2)
    if not bool(gap.detach() > 0):
        raise ValueError(f"f*_mu - f(x, y) = {float(gap)} must be > 0 for the log barrier")
    return problem.upper(x, y) + 0.5 * theta * _sqnorm(y) - tau * torch.log(gap)
