"""IAPTT-GM and its variants (Liu, Liu, Zeng & Zhang, NeurIPS 2021): the inner loop starts from a learned
initialization auxiliary z (``learns_init=True``), y_0 = z, projected onto ``y_bounds`` by :func:`bilevel.solve`.

* ``iaptt`` -- IA + pessimistic trajectory truncation (Algorithm 1): projected gradient descent
  ``y_{k+1} = P(y_k - s grad_y f(x, y_k))`` (:func:`bilevel.dynamics.gd`), objective
  ``max_{1<=k<=K} F(x, y_k(x, z))`` differentiated at ``k_bar`` (:mod:`bilevel.estimators.ptt`).
  Cost: K plain steps + K evaluations of F + k_bar taped steps + one backward pass (memory O(k_bar));
  ``single_pass=True``: K taped steps + K evaluations of F + one backward pass (RHG's time, memory O(K)).
* ``iagm`` -- IA without truncation: ``F(x, y_K(x, z))`` by reverse mode (:mod:`bilevel.estimators.reverse`).
  Cost: as RHG (K taped steps + one backward pass).
* ``iagm-a`` -- IA-GM(A), Eq. 9: FISTA dynamics (:func:`bilevel.dynamics.nesterov`), ``F(x, y_K(x, z))``
  by reverse mode. Cost: as RHG, two iterates in the state.

Options: ``checkpoint`` (memory mode of the taped pass) and, for ``iaptt``, ``single_pass``; the step is
``inner_lr`` (``s``; Theorem 3.4 uses ``1 / L_f``).
See ``docs/methods/iaptt.md``, ``iagm.md`` and ``iagm-a.md``.
"""
from __future__ import annotations

import functools
from typing import Optional

from .._validate import check_bool
from ..dynamics import nesterov
from ..dynamics.base import with_step_state
from ..dynamics.optim import inner_optimizer as _dynamics
from ..estimators import ptt, reverse
from ..problem import Problem
from .registry import Method, Plan, check_checkpoint, register, unrolled


def _iaptt(problem: Problem, inner_lr: float, inner_steps: int, *, checkpoint: Optional[int] = None,
           single_pass: bool = False, inner_optimizer: str = "gd", inner_optimizer_options: Optional[dict] = None
           ) -> Plan:
    dyn = with_step_state(_dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options), problem)
    est = functools.partial(ptt.estimate, problem, dyn, checkpoint=check_checkpoint(checkpoint),
                            single_pass=check_bool("single_pass", single_pass))
    return Plan(lambda x, y0, steps, wrt_init=False: est(x, y0, steps, wrt_init=wrt_init),
                functools.partial(ptt.value, problem, dyn))


def _iagm(problem: Problem, inner_lr: float, inner_steps: int, *, checkpoint: Optional[int] = None,
          inner_optimizer: str = "gd", inner_optimizer_options: Optional[dict] = None) -> Plan:
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options)
    return unrolled(reverse.estimate, problem, dyn, checkpoint=check_checkpoint(checkpoint))


def _iagm_a(problem: Problem, inner_lr: float, inner_steps: int, *, checkpoint: Optional[int] = None) -> Plan:
    return unrolled(reverse.estimate, problem, nesterov(problem, inner_lr),
                    checkpoint=check_checkpoint(checkpoint))


register(Method("iaptt", _iaptt, learns_init=True,
                summary="learned initialization + pessimistic trajectory truncation (max_k F(x, y_k))"))
register(Method("iagm", _iagm, learns_init=True,
                summary="learned initialization, reverse mode through the whole gradient-descent unroll"))
register(Method("iagm-a", _iagm_a, learns_init=True, own_dynamics="FISTA, IA-GM(A)'s Eq. 9",
                summary="learned initialization, reverse mode through a FISTA (Nesterov) unroll"))
