"""RHG: reverse-mode differentiation through the whole unroll (Franceschi et al., 2017; Maclaurin et al., 2015).

phi_K(x) = F(x, y_K(x)) with y_{k+1} = Phi_k(x, y_k). Back-propagation through the tape gives

    d phi_K / dx = grad_x F + sum_{k<K} B_k^T A_{k+1}^T ... A_{K-1}^T grad_y F,
    A_k = d Phi_k / d y,  B_k = d Phi_k / d x,

exactly (to round-off) for whatever dynamics Phi is. Cost: K forward steps with a tape plus one backward
pass (about 2-3x the plain inner loop in time); memory O(K) iterates.
The gradient w.r.t. the initialization y_0 comes from the same backward pass.

Memory mode ``checkpoint=S``: the forward pass keeps no tape, only the state at the start of every segment
of S steps; the backward pass recomputes one segment at a time with a tape and back-propagates through it.
The last segment is taped in the forward pass (the backward starts there). Memory O(K/S + S) states instead
of O(K); time one extra graph-free pass over the first K - S steps, i.e. about
1 + (K - S)/K * t_loop/t_RHG times RHG (t_loop: the plain inner loop). The gradient is the same to round-off.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._validate import check_checkpoint
from ..dynamics.base import Dynamics, State, run
from ..problem import Problem
from .base import Estimate, check_finite, grads_or_zeros


class _Segment(torch.autograd.Function):
    """Steps ``k0..k1-1`` of a dynamics as one tape node that recomputes them in its backward pass."""

    @staticmethod
    def forward(ctx, dyn, k0, k1, total, info, x, *state):
        ctx.dyn, ctx.k0, ctx.k1 = dyn, k0, k1
        ctx.save_for_backward(x, *state)
        out = run(dyn, x.detach(), tuple(s.detach() for s in state), k0, k1, create_graph=False, info=info,
                  total=total)
        return tuple(o.detach() for o in out)

    @staticmethod
    def backward(ctx, *grad_out):
        x, *state = ctx.saved_tensors
        with torch.enable_grad():
            xl = x.detach().requires_grad_()
            sl = tuple(s.detach().requires_grad_() for s in state)
            out = run(ctx.dyn, xl, sl, ctx.k0, ctx.k1, create_graph=True)
            pairs = [(o, g) for o, g in zip(out, grad_out) if g is not None and o.requires_grad]
            grads = grads_or_zeros([o for o, _ in pairs], (xl,) + sl, grad_outputs=[g for _, g in pairs]) \
                if pairs else tuple(torch.zeros_like(t) for t in (xl,) + sl)
        return (None, None, None, None, None) + tuple(grads)


def run_checkpointed(dyn: Dynamics, x: torch.Tensor, state: State, start: int, stop: int, every: int,
                     info: Optional[dict] = None) -> State:
    """Like ``run(..., create_graph=True)`` but storing only every ``every``-th state (see module doc).

    The last segment is taped directly: the backward pass starts there, so recomputing it would only
    repeat the same steps.
    """
    first: dict = {}
    last: dict = {}
    starts = list(range(start, stop, every))
    for k0 in starts[:-1]:
        state = _Segment.apply(dyn, k0, k0 + every, stop, first if k0 == start else None, x, *state)
    if starts:
        state = run(dyn, x, state, starts[-1], stop, create_graph=True, info=first if len(starts) == 1 else last)
    if info is not None and first:
        info["lower_grad_norm_first"] = first["lower_grad_norm_first"]
        info["lower_grad_norm_last"] = (last or first)["lower_grad_norm_last"]
    return state


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             wrt_init: bool = False, start: int = 0, state: Optional[State] = None,
             checkpoint: Optional[int] = None) -> Estimate:
    """Exact gradient of F(x, y_K(x, y0)) w.r.t. x (and y0 when ``wrt_init``).

    With ``start > 0`` the unroll resumes at step ``start`` from ``state`` (whose iterate is ``y0``), the
    earlier steps being constants: this is how truncation reuses this estimator. ``checkpoint=S`` stores
    only every S-th state and recomputes segments during the backward pass.
    """
    checkpoint = check_checkpoint(checkpoint)
    info: dict = {}
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y0 = y0.detach().requires_grad_(wrt_init)
        state = dyn.init(x, y0) if state is None else (y0,) + tuple(s.detach() for s in state[1:])
        if checkpoint is None:
            state = run(dyn, x, state, start, steps, create_graph=True, info=info)
        else:
            state = run_checkpointed(dyn, x, state, start, steps, checkpoint, info)
        y = state[0]
        upper = problem.upper(x, y)
        check_finite(upper.detach(), f"the upper objective after {steps} inner steps")
        inputs = (x, y0) if wrt_init else (x,)
        grads = grads_or_zeros(upper, inputs)
    info["upper"] = upper.detach()
    return Estimate(grads[0], grads[1] if wrt_init else None, y.detach(), info)


def value(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(F(x, y_K), y_K)`` without a tape: the objective this estimator differentiates."""
    x = x.detach()
    state = run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False)
    with torch.no_grad():
        return problem.upper(x, state[0]), state[0]
