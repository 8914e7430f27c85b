"""Step-indexed weight schedules ``k -> alpha_k`` (k = 1, 2, ...) for the aggregation methods.

The aggregation methods (``"bda"``, ``"bigsam"``) mix an upper- and a lower-level gradient step with a weight
``alpha_k`` that may change with the inner step k. A schedule is any callable ``k -> float`` taking the
1-based step number; this module ships the ones the papers use:

========================  =======================================  ==========================================
helper                    alpha_k                                  used by
========================  =======================================  ==========================================
``constant(c)``           c                                        BDA Fig. 3 (alpha = 0, alpha = 0.5)
``inverse(c)``            c / k                                    BDA Sec. 5.1 (0.5/k), Fig. 3 (0.9/k)
``power(p, c=1)``         c * k^(-p)                               Li-Gu-Huang (k^-0.25, BiG-SAM default)
``geometric(c, q)``       c * q^k                                  BVFIM supplement B.2 (0.5 * 0.999^k)
``bda_theory(...)``       min{2 gamma / (k (1 - beta)), 1 - eps}   BDA Prop. 1 / Thm. 2
========================  =======================================  ==========================================

with ``beta = sqrt(1 - 2 s_u sigma L_F / (sigma + L_F))`` for ``bda_theory`` (BDA Prop. 1), sigma and L_F the
strong-convexity and smoothness constants of F(x, .). Evaluating a schedule costs one Python call per inner
step (no tensors). Schedules are immutable (frozen dataclasses): they hold no state between calls.

A schedule only produces numbers; the method that consumes it checks that every alpha_k lies in [0, 1] when
the value is produced (inside the inner loop), so ``inverse(2.0)`` is a valid schedule object whose first
value 2.0 is rejected by ``"bda"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._validate import check_float, check_interval, check_step_index

__all__ = ["constant", "inverse", "power", "geometric", "bda_theory", "Schedule", "from_config"]


class Schedule:
    """Base class of the shipped schedules: ``schedule(k) -> float`` for the 1-based step number k."""

    def __call__(self, k: int) -> float:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True)
class _Constant(Schedule):
    c: float

    def __call__(self, k: int) -> float:
        check_step_index(k)
        return self.c


@dataclass(frozen=True)
class _Power(Schedule):
    c: float
    p: float

    def __call__(self, k: int) -> float:
        return self.c * float(check_step_index(k)) ** (-self.p)


@dataclass(frozen=True)
class _Geometric(Schedule):
    c: float
    q: float

    def __call__(self, k: int) -> float:
        return self.c * self.q ** check_step_index(k)


@dataclass(frozen=True)
class _BDATheory(Schedule):
    gamma: float
    beta: float
    eps: float

    def __call__(self, k: int) -> float:
        return min(2.0 * self.gamma / (check_step_index(k) * (1.0 - self.beta)), 1.0 - self.eps)


def constant(c: float) -> Schedule:
    """``alpha_k = c`` for every k.

    Parameters
    ----------
    c : float
        The constant value (finite).

    Returns
    -------
    Schedule
    """
    return _Constant(check_float("c", c))


def inverse(c: float) -> Schedule:
    """Harmonic decay ``alpha_k = c / k`` (BDA Sec. 5.1 uses ``inverse(0.5)``).

    Parameters
    ----------
    c : float
        Numerator (finite).

    Returns
    -------
    Schedule
    """
    return _Power(check_float("c", c), 1.0)


def power(p: float, c: float = 1.0) -> Schedule:
    """Polynomial decay ``alpha_k = c * k^(-p)`` (Li-Gu-Huang use ``power(0.25)``).

    Parameters
    ----------
    p : float
        Exponent, >= 0 (p = 0 is the constant c).
    c : float, default 1
        Scale (finite).

    Returns
    -------
    Schedule
    """
    pv = check_float("p", p, nonnegative=True)
    return _Power(check_float("c", c), pv)


def geometric(c: float, q: float) -> Schedule:
    """Geometric decay ``alpha_k = c * q^k``.

    Parameters
    ----------
    c : float
        Scale (finite).
    q : float
        Ratio, ``0 < q <= 1``.

    Returns
    -------
    Schedule
    """
    qv = check_interval("q", q, 0.0, 1.0, open_low=True)
    return _Geometric(check_float("c", c), qv)


def bda_theory(gamma: float, s_u: float, sigma: float, L_F: float, eps: float) -> Schedule:
    """BDA's theory schedule (Prop. 1 / Thm. 2): ``alpha_k = min{2 gamma / (k (1 - beta)), 1 - eps}``.

    ``beta = sqrt(1 - 2 s_u sigma L_F / (sigma + L_F))``; the convergence theory further asks for
    ``s_u <= 2 / (L_F + sigma)`` and a lower step ``s_l <= 1 / L_f``.

    Parameters
    ----------
    gamma : float
        In (0, 1].
    s_u : float
        The upper-level step (the ``upper_lr`` option of ``"bda"``), > 0.
    sigma : float
        Strong-convexity modulus of F(x, .), > 0.
    L_F : float
        Lipschitz constant of grad_y F(x, .), ``L_F >= sigma``.
    eps : float
        In (0, 1): caps alpha_k at ``1 - eps``.

    Returns
    -------
    Schedule

    Raises
    ------
    ValueError
        If a parameter is out of range, or ``1 - 2 s_u sigma L_F / (sigma + L_F)`` is not in [0, 1)
        (then beta is undefined or 1; reduce s_u to at most ``(sigma + L_F) / (2 sigma L_F)``).
    """
    g = check_interval("gamma", gamma, 0.0, 1.0, open_low=True)
    su = check_float("s_u", s_u, positive=True)
    sg = check_float("sigma", sigma, positive=True)
    lf = check_float("L_F", L_F, positive=True)
    e = check_interval("eps", eps, 0.0, 1.0, open_low=True, open_high=True)
    if lf < sg:
        raise ValueError(f"L_F (smoothness) must be >= sigma (strong convexity), got L_F={lf} < sigma={sg}")
    arg = 1.0 - 2.0 * su * sg * lf / (sg + lf)
    if not 0.0 <= arg < 1.0:
        raise ValueError(
            f"1 - 2 s_u sigma L_F / (sigma + L_F) = {arg:.6g} must be in [0, 1) for beta = sqrt(...) to be defined "
            f"and < 1; use 0 < s_u <= (sigma + L_F) / (2 sigma L_F) = {(sg + lf) / (2 * sg * lf):.6g}")
    return _BDATheory(g, math.sqrt(arg), e)


#: The schedules a configuration file can name (see :func:`from_config`).
BUILDERS = {"constant": constant, "inverse": inverse, "power": power, "geometric": geometric,
            "bda_theory": bda_theory}


def from_config(spec: Any) -> Any:
    """A schedule from its configuration form, so YAML configs can carry schedules.

    ``{"schedule": "geometric", "c": 0.5, "q": 0.999}`` gives ``geometric(c=0.5, q=0.999)``; the other keys
    are the keyword arguments of the named helper in :data:`BUILDERS`. Anything that is not a mapping is
    returned unchanged (numbers and callables are valid ``alpha`` values already).

    Parameters
    ----------
    spec : mapping or object

    Returns
    -------
    Schedule or the input

    Raises
    ------
    ValueError
        Unknown schedule name or arguments that do not fit it.
    """
    if not isinstance(spec, dict):
        return spec
    args = dict(spec)
    name = args.pop("schedule", None)
    if name not in BUILDERS:
        raise ValueError(f"a schedule mapping needs 'schedule' set to one of {sorted(BUILDERS)}, got {name!r}")
    try:
        return BUILDERS[name](**args)
    except TypeError as err:
        raise ValueError(f"bad arguments {args} for schedule {name!r}: {err}") from None
