"""PTT: pessimistic trajectory truncation (IAPTT-GM, Liu et al., NeurIPS 2021, Sec. 2.2 and Algorithm 1).

The objective is the worst upper-level value along the inner trajectory (Eq. 6),

    phi_K(x, z) = max_{1 <= k <= K} F(x, y_k(x, z)),    y_0 = z,

whose (almost-everywhere) gradient is the gradient of the selected truncation,

    k_bar = argmax_{k = 1..K} F(x, y_k),    grad phi_K = d F(x, y_{k_bar}(x, z)) / d(x, z),

taken by reverse mode through the first ``k_bar`` steps only (ties: the first maximizer). Works for any
dynamics (:mod:`bilevel.dynamics`).

Cost (default, two passes): K plain inner steps without a tape plus K evaluations of F (selection pass;
memory O(1) in K), then k_bar taped steps and one backward pass over them (memory O(k_bar)). Compared with
RHG this adds one graph-free inner loop and K upper evaluations, and saves the tape of the K - k_bar discarded
steps. ``single_pass=True``: one taped pass of K steps recording F(x, y_k) without a tape, then the backward
pass from ``y_kbar`` -- RHG's cost plus K upper evaluations, but the tape of all K steps is held until the
backward pass (memory O(K), like RHG).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .._validate import check_bool, check_checkpoint, check_int
from ..dynamics.base import Dynamics, State, run
from ..problem import Problem
from . import reverse
from .base import Estimate, check_finite, grads_or_zeros


def select(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int,
           info: Optional[Dict[str, object]] = None) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """Graph-free selection pass: ``(k_bar, F(x, y_kbar), y_kbar)``.

    Parameters
    ----------
    problem, dyn : Problem, Dynamics
        The problem and the inner dynamics.
    x, y0 : Tensor
        Flat upper-level variable and initialization (used as constants).
    steps : int
        K >= 1 inner steps.
    info : dict, optional
        Receives the inner loop's diagnostics.

    Returns
    -------
    k_bar : int
        1-based index of the first maximizer of ``F(x, y_k)`` over ``k = 1..K``.
    upper : Tensor
        ``F(x, y_kbar)`` (scalar, detached).
    y : Tensor
        ``y_kbar`` (flat, detached).
    """
    steps = check_int("inner_steps", steps, 1, who="pessimistic trajectory truncation")
    x = x.detach()
    values = []
    best: Dict[str, torch.Tensor] = {}

    def record(k: int, state: State) -> None:
        # called by run() under no_grad; no host synchronisation per step: the running maximizer is
        # kept with torch.where (strict '>' keeps the first maximizer on ties)
        y = state[0].detach()
        val = problem.upper(x, y).detach()
        values.append(val)
        if not best:
            best.update(val=val, y=y)
        else:
            better = val > best["val"]
            best.update(val=torch.where(better, val, best["val"]), y=torch.where(better, y, best["y"]))

    run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False, info=info, on_step=record)
    vals = torch.stack(values)
    check_finite(vals, f"the upper objective along the {steps} inner steps")
    k_bar = int(torch.argmax(vals)) + 1  # torch.argmax returns the first maximal index
    return k_bar, best["val"], best["y"]


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             wrt_init: bool = False, checkpoint: Optional[int] = None, single_pass: bool = False) -> Estimate:
    """Gradient of ``max_k F(x, y_k(x, y0))`` w.r.t. x (and y0 when ``wrt_init``) at the selected k_bar.

    Parameters
    ----------
    problem, dyn : Problem, Dynamics
        The problem and any inner dynamics.
    x, y0 : Tensor
        Flat upper-level variable and inner initialization.
    steps : int
        K, the trajectory length searched for the maximizer.
    wrt_init : bool
        Also return the gradient w.r.t. ``y0`` (``Estimate.grad_y0``).
    checkpoint : int, optional
        Segment length of the re-run's memory mode (see :mod:`bilevel.estimators.reverse`).
    single_pass : bool
        Select k_bar during one taped pass (faster, memory O(K)) instead of a graph-free selection pass
        followed by a taped re-run of k_bar steps (memory O(k_bar)). Same result.

    Returns
    -------
    Estimate
        ``y`` is ``y_kbar``; ``info["k_bar"]`` the 1-based selected step, ``info["upper"]`` =
        ``F(x, y_kbar)``, plus ``lower_grad_norm_first`` / ``lower_grad_norm_last`` of the full trajectory.
    """
    checkpoint = check_checkpoint(checkpoint)
    if check_bool("single_pass", single_pass):
        if checkpoint is not None:
            raise ValueError("single_pass and checkpoint cannot be combined: checkpointing needs the two-pass "
                             "selection (set single_pass=False)")
        return _single_pass(problem, dyn, x, y0, steps, wrt_init)
    scan_info: dict = {}
    k_bar, _, _ = select(problem, dyn, x, y0, steps, scan_info)
    est = reverse.estimate(problem, dyn, x, y0, k_bar, wrt_init=wrt_init, checkpoint=checkpoint)
    est.info.update(scan_info)
    est.info["k_bar"] = k_bar
    return est


def _single_pass(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int,
                 wrt_init: bool) -> Estimate:
    steps = check_int("inner_steps", steps, 1, who="pessimistic trajectory truncation")
    info: dict = {}
    values, iterates = [], []

    def record(k: int, state: State) -> None:
        iterates.append(state[0])
        with torch.no_grad():
            values.append(problem.upper(x.detach(), state[0].detach()))

    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y0 = y0.detach().requires_grad_(wrt_init)
        run(dyn, x, dyn.init(x, y0), 0, steps, create_graph=True, info=info, on_step=record)
        vals = torch.stack(values)
        check_finite(vals, f"the upper objective along the {steps} inner steps")
        k_bar = int(torch.argmax(vals)) + 1
        y = iterates[k_bar - 1]
        del iterates[k_bar - 1:]  # the discarded steps' tape is freed before the backward pass
        upper = problem.upper(x, y)
        inputs = (x, y0) if wrt_init else (x,)
        grads = grads_or_zeros(upper, inputs)
    info.update(upper=upper.detach(), k_bar=k_bar)
    return Estimate(grads[0], grads[1] if wrt_init else None, y.detach(), info)


def value(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(max_{1<=k<=K} F(x, y_k), y_kbar)`` without a tape: the objective :func:`estimate` differentiates."""
    _, upper, y = select(problem, dyn, x, y0, steps)
    return upper, y
