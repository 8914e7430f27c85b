"""Gradient-based meta-learners as bilevel presets: ``maml``, ``fomaml``, ``reptile`` and ``metasgd``.

All four learn the inner initialization (``learns_init=True``): the initialization of the task weights is
``y0``, its meta-gradient is ``res.grad_y0``, and :func:`bilevel.solve` / :class:`bilevel.OuterLoop` update it
with the outer optimizer like the IA methods' z. ``upper`` F is the query (validation) loss and ``lower`` f the
support (training) loss of the task weights y. x is whatever else the outer loop learns: for ``maml``,
``fomaml`` and ``reptile`` any extra upper variables (weight decay of f, a shared body that the inner loop does
not adapt, ...) or an empty tensor ``torch.zeros(0)`` when there are none; for ``metasgd`` the per-parameter
inner step multipliers. The inner loop (s = ``inner_lr``, P the projection onto ``y_bounds``) is, k = 0..K-1::

    maml, fomaml, reptile:  y_{k+1} = P(y_k - s grad_y f(x, y_k))                  (plain gradient descent)
    metasgd:                y_{k+1} = P(y_k - s a (.) grad_y f(x, y_k)),  a = x    (per-entry steps)

and the returned gradients are

* ``maml`` (Finn, Abbeel & Levine, 2017, second order): the exact reverse-mode gradient of
  ``F(x, y_K(x, y_0))`` w.r.t. y_0 (``grad_y0``) and x (``grad``), through every inner step::

      grad_y0 = A_0^T ... A_{K-1}^T grad_y F(x, y_K),   A_k = I - s d2f/dy2 (x, y_k)

  This is the ``iagm`` preset (:mod:`bilevel.methods.iaptt`: GD + :mod:`bilevel.estimators.reverse` with
  ``wrt_init=True``) under its meta-learning name, bit for bit without ``shared_init``. Cost: K taped steps and
  one backward pass (K Hessian-vector products); memory O(K) iterates (``checkpoint=S``: O(K/S + S)).
* ``fomaml`` (first-order MAML, Finn et al. Sec. 5.2): the Jacobian of the unroll is replaced by the identity,
  ``grad_y0 = grad_y F(x, y_K)``, ``grad = grad_x F(x, y_K)`` (y_K held fixed). Cost: K graph-free gradient
  evaluations of f and one gradient of F; no Hessian-vector products; memory O(1) in K.
* ``reptile`` (Nichol, Achiam & Schulman, 2018): ``grad_y0 = (y_0 - y_K) / (K s)`` (default
  ``normalize=True``: with plain GD this is the mean inner gradient ``(1/K) sum_k grad_y f(x, y_k)``), or the raw
  Reptile direction ``y_0 - y_K`` with ``normalize=False`` (then SGD with ``outer_lr = eps`` is Reptile's
  ``theta <- theta + eps (y_K - theta)``). It uses f only and is **not** a gradient of F; x (not adapted by
  the inner loop, and without a Reptile update of its own) gets the first-order ``grad_x F(x, y_K)`` as in
  ``fomaml``. Cost: as ``fomaml``.
* ``metasgd`` (Li, Zhou, Chen & Li, 2017): x = the step multipliers a (:func:`bilevel.dynamics.metasgd`: x has
  y's structure, each tensor of y's shape or broadcastable to it; the paper's step vector is ``s * a``, so
  ``a = 1`` starts as MAML with step s); ``grad`` = d F(x, y_K) / d a and ``grad_y0`` = d F / d y_0, exactly,
  by one reverse pass through the unroll. Cost and memory as ``maml``. The objectives receive x = a too
  (they usually ignore it).

Option ``shared_init`` (all four): y holds the weights of B tasks of a meta-batch along the leading axis of
every tensor, and the tasks share one initialization theta. y0 must repeat theta once per task (its rows are
equal); the inner loop starts every task from the row mean of y0, and every row of ``grad_y0`` holds the
gradient w.r.t. theta -- the sum over tasks of the per-task gradients (the exact d F / d theta) for ``maml``,
``fomaml`` and ``metasgd``, the mean over tasks of ``(theta - y_K,j) / (K s)`` (batched Reptile) for
``reptile`` -- so an outer optimizer that starts from equal rows keeps them equal and updates theta exactly
as if it were a single tensor.

The first-order estimators of ``fomaml`` and ``reptile`` live in :mod:`bilevel.estimators.first_order` (re-exported
here); the plans of all four are :func:`bilevel.methods.registry.unrolled` compositions. Documentation:
``docs/methods/maml.md``, ``fomaml.md``, ``reptile.md``, ``metasgd.md``.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch

from .._tree import Spec
from .._validate import check_bool, check_checkpoint
from ..dynamics.optim import inner_optimizer as _dynamics
from ..dynamics.metasgd import metasgd
from ..estimators import Estimate, reverse
from ..estimators.first_order import first_order_estimate, reptile_estimate
from ..problem import Problem
from .registry import Method, Plan, register, unrolled

__all__ = ["first_order_estimate", "reptile_estimate", "shared_init_plan"]

#: rows of a shared initialization may differ by this much relative to their scale (optimizer round-off)
_ROW_TOL = 1e-3


# ------------------------------------------------------------------------------------------ shared init
def _task_count(spec: Spec) -> int:
    lead = {s[0] if len(s) else None for s in spec.shapes}
    if None in lead or len(lead) != 1:
        raise ValueError("shared_init=True needs a leading task axis of the same length on every tensor of y (y "
                         f"holds one row of weights per task of the meta-batch); y is {spec.describe()}")
    return lead.pop()


def _rows(flat: torch.Tensor, spec: Spec, tasks: int) -> List[torch.Tensor]:
    return [t.reshape(tasks, -1) for t in torch.split(flat, spec.sizes)]


def shared_init_plan(plan: Plan, spec: Spec, reduce: str) -> Plan:
    """Tie the initialization across the leading task axis of y (option ``shared_init``, module docstring).

    Parameters
    ----------
    plan : Plan
        The method's plan on per-task initializations.
    spec : Spec
        Structure of y; every tensor has the same leading length B (the tasks).
    reduce : {"sum", "mean"}
        How the per-task initialization gradients are combined into the gradient of the shared one.

    Returns
    -------
    Plan
        Starts every task from the row mean of y0; every row of ``grad_y0`` holds the combined gradient.

    Raises
    ------
    ValueError
        y without a common leading axis (at build), or y0 whose rows are not copies of one initialization
        (at estimate time).
    """
    tasks = _task_count(spec)

    def tie(y0: torch.Tensor) -> torch.Tensor:
        rows = _rows(y0.detach(), spec, tasks)
        means = [r.mean(dim=0, keepdim=True) for r in rows]
        spread = max(float((r - m).abs().max()) for r, m in zip(rows, means))
        scale = max(float(m.abs().max()) for m in means)
        if spread > _ROW_TOL * (1.0 + scale):
            raise ValueError(f"shared_init=True: the rows of y0 along the task axis must be copies of the shared "
                             f"initialization, but they differ by up to {spread:.3g} (repeat the initialization "
                             f"once per task, e.g. theta.expand(B, *theta.shape).clone(); warm_start must be off)")
        return torch.cat([m.expand(tasks, -1).reshape(-1) for m in means])

    def spread_grad(g: torch.Tensor) -> torch.Tensor:
        rows = _rows(g, spec, tasks)
        red = [r.sum(dim=0, keepdim=True) if reduce == "sum" else r.mean(dim=0, keepdim=True) for r in rows]
        return torch.cat([r.expand(tasks, -1).reshape(-1) for r in red])

    def estimate(x: torch.Tensor, y0: torch.Tensor, steps: int, wrt_init: bool = False) -> Estimate:
        est = plan.estimate(x, tie(y0), steps, wrt_init=wrt_init)
        if est.grad_y0 is not None:
            est.grad_y0 = spread_grad(est.grad_y0)
        return est

    def value(x: torch.Tensor, y0: torch.Tensor, steps: int):
        return plan.value(x, tie(y0), steps)

    return Plan(estimate, value)


# ------------------------------------------------------------------------------------------ presets
def _finish(plan: Plan, problem: Problem, shared_init: Any, reduce: str = "sum") -> Plan:
    if check_bool("shared_init", shared_init):
        return shared_init_plan(plan, problem.y_spec, reduce)
    return plan


def _maml(problem: Problem, inner_lr: float, inner_steps: int, *, shared_init: bool = False,
          checkpoint: Optional[int] = None, inner_optimizer: str = "gd",
          inner_optimizer_options: Optional[dict] = None) -> Plan:
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options)
    plan = unrolled(reverse.estimate, problem, dyn, checkpoint=check_checkpoint(checkpoint))
    return _finish(plan, problem, shared_init)


def _fomaml(problem: Problem, inner_lr: float, inner_steps: int, *, shared_init: bool = False,
            inner_optimizer: str = "gd", inner_optimizer_options: Optional[dict] = None) -> Plan:
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options)
    return _finish(unrolled(first_order_estimate, problem, dyn), problem, shared_init)


def _reptile(problem: Problem, inner_lr: float, inner_steps: int, *, normalize: bool = True,
             shared_init: bool = False, inner_optimizer: str = "gd",
             inner_optimizer_options: Optional[dict] = None) -> Plan:
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options)
    plan = unrolled(reptile_estimate, problem, dyn, lr=inner_lr,
                    normalize=check_bool("normalize", normalize))
    return _finish(plan, problem, shared_init, reduce="mean")


def _metasgd(problem: Problem, inner_lr: float, inner_steps: int, *, shared_init: bool = False,
             checkpoint: Optional[int] = None) -> Plan:
    plan = unrolled(reverse.estimate, problem, metasgd(problem, inner_lr), checkpoint=check_checkpoint(checkpoint))
    return _finish(plan, problem, shared_init)


register(Method("maml", _maml, learns_init=True,
                summary="MAML (second order): exact reverse mode through the GD unroll w.r.t. the initialization"))
register(Method("fomaml", _fomaml, learns_init=True,
                summary="first-order MAML: grad_y F(x, y_K) as the initialization's gradient, no backprop"))
register(Method("reptile", _reptile, learns_init=True,
                summary="Reptile: (y0 - y_K) / (K inner_lr) as the initialization's direction (f only)"))
register(Method("metasgd", _metasgd, learns_init=True, own_dynamics="gradient steps with learned per-parameter sizes",
                summary="Meta-SGD: x = per-parameter inner step multipliers, learned with the init by reverse mode"))
