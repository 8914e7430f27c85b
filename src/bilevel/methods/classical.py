"""Presets of the classical estimators: RHG, FHG, T-RHG, CG and Neumann, all on plain gradient descent.

Inner dynamics for all five: ``y_{k+1} = P(y_k - inner_lr * grad_y f(x, y_k))`` (P: projection onto
``y_bounds``). See ``docs/methods/`` for the formulas and costs. ``compile_step=True`` (rhg with ``checkpoint``,
trhg, cg, neumann) compiles their graph-free steps (:mod:`bilevel.dynamics.gd`). ``engine`` (rhg, trhg) chooses how
the reverse pass runs: "autograd" (the tape, default), "tape_free" (an explicit loop of vector-Jacobian products of
the steps) or "compiled" (that loop through ``torch.compile``, ``compile_block`` steps per graph);
:mod:`bilevel.estimators.tape_free`.
"""
from __future__ import annotations

import functools
from typing import Optional

from .. import linear_solve
from .._validate import check_bool
from ..dynamics.optim import inner_optimizer as _dynamics
from ..estimators import forward, implicit, tape_free, truncated
from ..problem import Problem
from .registry import Method, Plan, check_checkpoint, check_float, check_int, register, unrolled


def _compile_step(value, needs: str = "") -> bool:
    """The ``compile_step`` option; ``needs`` (non-empty) says why there is nothing to compile."""
    if check_bool("compile_step", value) and needs:
        raise ValueError(f"compile_step=True has nothing to compile here: {needs}")
    return value


def _rhg(problem: Problem, inner_lr: float, inner_steps: int, *, checkpoint: Optional[int] = None,
         compile_step: bool = False, inner_optimizer: str = "gd",
         inner_optimizer_options: Optional[dict] = None, engine: str = "autograd",
         compile_block: Optional[int] = None) -> Plan:
    ck = check_checkpoint(checkpoint)
    comp = check_bool("compile_step", compile_step)
    if engine == "autograd":
        comp = _compile_step(comp, "" if ck is not None else
                             "without checkpoint every rhg step is taped and differentiated twice, which compiled "
                             "graphs do not support (set checkpoint=S to compile the graph-free forward pass, or "
                             "use engine='compiled')")
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options,
                    compile_step=comp and engine == "autograd")
    engine = tape_free.check_engine(engine, problem, dyn, comp)
    block = tape_free.check_block(compile_block, engine)
    return unrolled(tape_free.reverse_estimator(engine, block), problem, dyn, checkpoint=ck)


def _fhg(problem: Problem, inner_lr: float, inner_steps: int, *, inner_optimizer: str = "gd",
         inner_optimizer_options: Optional[dict] = None) -> Plan:
    return unrolled(forward.estimate, problem, _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options))


def _trhg(problem: Problem, inner_lr: float, inner_steps: int, *, truncate: Optional[int] = None,
          checkpoint: Optional[int] = None, compile_step: bool = False, inner_optimizer: str = "gd",
          inner_optimizer_options: Optional[dict] = None, engine: str = "autograd",
          compile_block: Optional[int] = None) -> Plan:
    t = max(1, inner_steps // 2) if truncate is None else check_int("truncate", truncate, 0, inner_steps)
    comp = _compile_step(compile_step)
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options, compile_step=comp)
    engine = tape_free.check_engine(engine, problem, dyn, comp)
    return unrolled(truncated.estimate, problem, dyn, truncate=t, checkpoint=check_checkpoint(checkpoint),
                    engine=engine, compile_block=tape_free.check_block(compile_block, engine))


def _cg(problem: Problem, inner_lr: float, inner_steps: int, *, cg_steps: int = 100,
        cg_tol: Optional[float] = None, compile_step: bool = False, inner_optimizer: str = "gd",
        inner_optimizer_options: Optional[dict] = None) -> Plan:
    steps = check_int("cg_steps", cg_steps, 1)
    tol = check_float("cg_tol", cg_tol, nonnegative=True, allow_none=True)
    solve = functools.partial(linear_solve.cg, steps=steps, tol=tol)
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options,
                    compile_step=_compile_step(compile_step))
    return unrolled(implicit.estimate, problem, dyn, solve=solve)


def _neumann(problem: Problem, inner_lr: float, inner_steps: int, *, neumann_terms: int = 20,
             neumann_lr: Optional[float] = None, neumann_tol: Optional[float] = 1e-2,
             compile_step: bool = False, inner_optimizer: str = "gd",
             inner_optimizer_options: Optional[dict] = None) -> Plan:
    terms = check_int("neumann_terms", neumann_terms, 1)
    lr = inner_lr if neumann_lr is None else check_float("neumann_lr", neumann_lr, positive=True)
    tol = check_float("neumann_tol", neumann_tol, positive=True, allow_none=True)
    solve = functools.partial(linear_solve.neumann, terms=terms, lr=lr, tol=tol)
    dyn = _dynamics(problem, inner_lr, inner_optimizer, inner_optimizer_options,
                    compile_step=_compile_step(compile_step))
    return unrolled(implicit.estimate, problem, dyn, solve=solve)


register(Method("rhg", _rhg, summary="reverse-mode through the whole unroll (exact for F(x, y_K))"))
register(Method("fhg", _fhg, summary="forward-mode through the unroll; memory independent of K"))
register(Method("trhg", _trhg, summary="reverse-mode through the last `truncate` steps"))
register(Method("cg", _cg, summary="implicit differentiation at y_K, conjugate-gradient linear solve"))
register(Method("neumann", _neumann, summary="implicit differentiation at y_K, truncated Neumann series"))
