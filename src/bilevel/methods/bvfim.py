"""BVFIM: value-function-based interior-point method (Liu, Liu, Yuan, Zeng & Zhang, ICML 2021), registered
as ``"bvfim"``.

At each outer step (supplement, Proposition 1)::

    z    <- z_steps  projected GD steps (step inner_lr) on  f(x, y) + mu1/2 ||y||^2,  from y0
    f*_mu = f(x, z) + mu1/2 ||z||^2 + mu2
    y    <- y_steps  projected GD steps (step y_lr, halved until f*_mu - f(x, y) > 0) on
            F(x, y) + theta/2 ||y||^2 - tau ln(f*_mu - f(x, y)),                      from z
    grad  = grad_x F(x, y) + tau (grad_x f(x, y) - grad_x f(x, z)) / (f*_mu - f(x, y))

and :func:`bilevel.solve` divides mu1, mu2, theta and tau by ``decay**t`` at outer step t (the paper:
(mu1, theta, tau) = (1, 1, 1) / 1.01^k). Cost per hyper-iteration: z_steps + y_steps first-order
gradient evaluations (+ one f evaluation per y trial point and three gradients for the formula); no
Hessian-vector products; memory independent of the step counts. Binding builds one
:class:`bilevel.estimators.value_function.BVFIMSettings` (which validates every option); only the step counts
follow the per-call budget. Estimator: :mod:`bilevel.estimators.value_function`; documentation:
``docs/methods/bvfim.md``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from .._validate import check_float, check_int
from ..estimators import value_function
from ..estimators.value_function import BVFIMSettings
from ..problem import Problem
from .registry import Method, Plan, register

__all__ = ["DEFAULTS", "default_steps", "schedule"]

#: Defaults of the weights: the supplement's numerical experiment (B.1) uses (mu1, theta, tau) = (1, 1, 1)
#: divided by 1.01^k; mu2 = 1 is our choice (the paper ties mu2 to f's value).
DEFAULTS: Dict[str, float] = {"mu1": 1.0, "mu2": 1.0, "theta": 1.0, "tau": 1.0, "decay": 1.01}
_DECAYED = ("mu1", "mu2", "theta", "tau")


def default_steps(inner_steps: int) -> tuple:
    """``(z_steps, y_steps)`` from the budget ``inner_steps`` = T, split by the paper's fair-time rule.

    ``z_steps = max(1, T // 2)`` and ``y_steps = max(1, T // 4)``, so ``z_steps + 2 y_steps = T`` when 4
    divides T (T = 100 gives the supplement's T_z = 50, T_y = 25): a y step evaluates both F and f.

    Parameters
    ----------
    inner_steps : int
        The budget T >= 1.

    Returns
    -------
    tuple of int
    """
    return max(1, inner_steps // 2), max(1, inner_steps // 4)


def _check_decay(value: Any) -> float:
    d = check_float("decay", value, positive=True)
    if d < 1.0:
        raise ValueError(f"decay must be >= 1 (the weights are divided by decay**t), got {d}")
    return d


def schedule(options: Dict[str, Any], t: int) -> Dict[str, Any]:
    """The weights at outer step t: mu1, mu2, theta, tau (given or default) divided by ``decay**t``.

    Parameters
    ----------
    options : dict
        The user's options for ``"bvfim"`` (missing weights take :data:`DEFAULTS`).
    t : int
        Outer step (0-based); t = 0 leaves the weights unchanged.

    Returns
    -------
    dict
        A copy of ``options`` with the four scaled weights filled in.

    Raises
    ------
    ValueError
        If a weight or ``decay`` is invalid, or a scaled weight underflows to 0 (too many outer steps for
        this decay).
    """
    out = dict(options)
    d = _check_decay(out.get("decay", DEFAULTS["decay"]))
    factor = d ** (-int(t))
    for name in _DECAYED:
        v = check_float(name, out.get(name, DEFAULTS[name]), positive=name in ("mu2", "tau"),
                        nonnegative=True)
        scaled = v * factor
        if v > 0 and scaled == 0.0:
            raise ValueError(f"{name} = {v} / {d}**{t} underflows to 0 at outer step {t}; use fewer outer steps "
                             "or a decay closer to 1")
        out[name] = scaled
    return out


def _bvfim(problem: Problem, inner_lr: float, inner_steps: int, *, z_steps: Optional[int] = None,
           y_steps: Optional[int] = None, y_lr: Optional[float] = None, mu1: float = DEFAULTS["mu1"],
           mu2: float = DEFAULTS["mu2"], theta: float = DEFAULTS["theta"], tau: float = DEFAULTS["tau"],
           decay: float = DEFAULTS["decay"], max_backtracks: int = 50, armijo: bool = True) -> Plan:
    """Bind BVFIM to a problem.

    Parameters
    ----------
    problem : Problem
    inner_lr : float
        Step of the z-loop (and of the y-loop unless ``y_lr``).
    inner_steps : int
        Budget T: defaults ``z_steps = max(1, T // 2)``, ``y_steps = max(1, T // 4)`` (T_z + 2 T_y = T).
    z_steps : int, optional
        Gradient steps on f + mu1/2 ||y||^2 (>= 1).
    y_steps : int, optional
        Barrier gradient steps (>= 0; 0 gives y = z).
    y_lr : float, optional
        Initial step of every y step (> 0), default ``inner_lr``.
    mu1, theta : float
        Tikhonov weights of the z- and y-objectives (>= 0; default 1).
    mu2 : float
        Relaxation of the value-function constraint (> 0; default 1).
    tau : float
        Barrier weight (> 0; default 1).
    decay : float
        ``solve`` divides mu1, mu2, theta, tau by ``decay**t`` at outer step t (>= 1; default 1.01).
        Ignored by ``hypergrad`` (t = 0).
    max_backtracks : int
        Maximal halvings of a y step (>= 0; default 50).
    armijo : bool
        Halve a y step also until the barrier objective decreases sufficiently (default True). False halves
        only to stay inside the barrier's domain; that fixed-step loop bounces on the boundary once tau and
        the gap are small, and its trajectory then depends on the last bits of the arithmetic.

    Returns
    -------
    Plan
    """
    def step_counts(steps: int) -> Dict[str, int]:
        dz, dy = default_steps(check_int("inner_steps", steps, 1))
        return {"z_steps": dz if z_steps is None else z_steps, "y_steps": dy if y_steps is None else y_steps}

    settings = BVFIMSettings(**step_counts(inner_steps), z_lr=inner_lr, y_lr=inner_lr if y_lr is None else y_lr,
                             mu1=mu1, mu2=mu2, theta=theta, tau=tau, max_backtracks=max_backtracks, armijo=armijo)
    _check_decay(decay)

    def settings_for(steps: int) -> BVFIMSettings:
        # the step counts are the only per-call part; the bound budget (what hypergrad / solve pass) or explicit
        # z_steps and y_steps reuse the settings validated above
        counts = step_counts(steps)
        if (counts["z_steps"], counts["y_steps"]) == (settings.z_steps, settings.y_steps):
            return settings
        return dataclasses.replace(settings, **counts)

    def estimate(x, y0, steps, wrt_init=False):
        return value_function.estimate(problem, x, y0, settings_for(steps), wrt_init=wrt_init)

    def value(x, y0, steps):
        return value_function.value(problem, x, y0, settings_for(steps))

    return Plan(estimate, value)


register(Method("bvfim", _bvfim, schedule=schedule, descends_lower=False,
                own_dynamics="a z-loop and a log-barrier y-loop with backtracking",
                summary="value-function interior point: z-loop + log-barrier y-loop, first order (no HVPs)"))
