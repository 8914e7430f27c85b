"""Aggregation methods: ``"bda"`` (Liu et al., ICML 2020) and ``"bigsam"`` (Li, Gu & Huang, 2020).

Both are the aggregation dynamics of :mod:`bilevel.dynamics.aggregation` composed with reverse-mode
differentiation of the unroll (:mod:`bilevel.estimators.reverse`): the hypergradient is the exact gradient of
phi_K(x) = F(x, y_K(x)) for the aggregated unroll.

``"bda"`` -- Bi-level Descent Aggregation (BDA Eq. 10; nonsmooth lower level: supplement D.2, Eq. 13)::

    y_{k+1} = P( y_k - (alpha_{k+1} s_u grad_y F(x, y_k) + (1 - alpha_{k+1}) d^f_k) ),   k = 0..K-1
    d^f_k   = s_l grad_y f(x, y_k)                                or, with ``lower_prox``,
    d^f_k   = y_k - prox_{s_l g}(y_k - s_l grad_y f(x, y_k))

``"bigsam"`` -- the improved bilevel model's inner solver (Li-Gu-Huang Alg. 1 / Eq. 13; their h is our lower
objective f, their g our upper objective F)::

    theta = y_k - t grad_y f(x, y_k),  phi = y_k - s grad_y F(x, y_k),
    y_{k+1} = P( alpha_{k+1} theta + (1 - alpha_{k+1}) phi )      on steps k + 1 = m, 2m, ... (m = bigsam_every)
    y_{k+1} = P( theta )                                           on the other steps

with s_l = t = ``inner_lr`` and s_u = s = ``upper_lr``. Cost per aggregated inner step: one extra gradient of F
(about 2x an RHG step forward and backward); memory O(K) iterates as RHG.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch

from .. import schedules
from .._tree import Spec
from .._validate import check_callable
from ..dynamics.aggregation import Alpha, aggregation, alpha_value
from ..estimators import tape_free
from ..problem import Problem
from .registry import Method, Plan, check_checkpoint, check_float, check_int, register, unrolled


def _alpha_option(alpha: Any, default: Alpha) -> Alpha:
    """The ``alpha`` option: ``default`` for None, a schedule as given, else a number checked to lie in [0, 1]."""
    if alpha is None:
        return default
    return alpha if callable(alpha) else alpha_value(alpha, 1)


def _upper_lr(upper_lr: Any, inner_lr: float) -> float:
    return inner_lr if upper_lr is None else check_float("upper_lr", upper_lr, positive=True)


def _flat_prox(user_prox: Any, spec: Spec) -> Optional[Callable[[torch.Tensor, float], torch.Tensor]]:
    """Wrap ``prox(v, step)`` on the user's structure (tensor or dict) into a differentiable map on flat vectors."""
    if check_callable("lower_prox", user_prox, "prox(v, step) (e.g. bilevel.prox.l1(0.1))", allow_none=True) is None:
        return None

    def prox(flat: torch.Tensor, step: float) -> torch.Tensor:
        out = user_prox(spec.unflatten(flat), step)
        if spec.keys is None:
            if not isinstance(out, torch.Tensor) or out.shape != spec.shapes[0]:
                got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"lower_prox must return {spec.describe()}, got {got}")
            return out.reshape(-1)
        if not isinstance(out, Mapping) or set(out.keys()) != set(spec.keys):
            raise ValueError(f"lower_prox must return {spec.describe()}, got {type(out).__name__}")
        parts = []
        for k, shape in zip(spec.keys, spec.shapes):
            t = out[k]
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                raise ValueError(f"lower_prox must return {spec.describe()}; entry {k!r} is wrong")
            parts.append(t.reshape(-1))  # keeps the tape (unlike Spec.flatten, which detaches)
        return torch.cat(parts)

    return prox


def _bda(problem: Problem, inner_lr: float, inner_steps: int, *, upper_lr: Optional[float] = None,
         alpha: Optional[Alpha] = None, lower_prox: Optional[Callable[..., Any]] = None,
         checkpoint: Optional[int] = None, engine: str = "autograd", compile_block: Optional[int] = None) -> Plan:
    """BDA: ``upper_lr`` (s_u, default ``inner_lr``), ``alpha`` (float or ``k -> alpha_k``, default 0.5/k),
    ``lower_prox`` (``prox(v, step)`` of a nonsmooth lower-level term, on y's structure; default None), ``engine``
    (the reverse pass: "autograd", "tape_free" or "compiled"; :mod:`bilevel.estimators.tape_free`) and
    ``compile_block`` (steps per compiled graph)."""
    dyn = aggregation(problem, inner_lr, _upper_lr(upper_lr, inner_lr),
                      _alpha_option(alpha, schedules.inverse(0.5)), weights="upper",
                      prox=_flat_prox(lower_prox, problem.y_spec))
    engine = tape_free.check_engine(engine, problem, dyn)
    return unrolled(tape_free.reverse_estimator(engine, tape_free.check_block(compile_block, engine)), problem, dyn,
                    checkpoint=check_checkpoint(checkpoint))


def _bigsam(problem: Problem, inner_lr: float, inner_steps: int, *, upper_lr: Optional[float] = None,
            alpha: Optional[Alpha] = None, bigsam_every: int = 1, checkpoint: Optional[int] = None,
            engine: str = "autograd", compile_block: Optional[int] = None) -> Plan:
    """BiG-SAM inner loop: ``upper_lr`` (s, default ``inner_lr``), ``alpha`` (weight of the lower step, float or
    ``k -> alpha_k``, default k^-0.25), ``bigsam_every`` (aggregate on steps m, 2m, ...; default 1), ``engine`` (as
    ``compile_block`` as bda's)."""
    every = check_int("bigsam_every", bigsam_every, 1)
    dyn = aggregation(problem, inner_lr, _upper_lr(upper_lr, inner_lr),
                      _alpha_option(alpha, schedules.power(0.25)), weights="lower", every=every)
    engine = tape_free.check_engine(engine, problem, dyn)
    return unrolled(tape_free.reverse_estimator(engine, tape_free.check_block(compile_block, engine)), problem, dyn,
                    checkpoint=check_checkpoint(checkpoint))


register(Method("bda", _bda, summary="BDA: aggregated upper/lower gradient steps, reverse mode through the unroll",
                descends_lower=False, own_dynamics="aggregated steps on F and f"))
register(Method("bigsam", _bigsam, descends_lower=False, own_dynamics="BiG-SAM's averaged steps on f and F",
                summary="BiG-SAM inner loop (Li-Gu-Huang): alpha-averaged lower/upper steps, reverse mode"))
