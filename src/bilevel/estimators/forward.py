"""FHG: forward-mode differentiation of the unroll (Franceschi et al., 2017, forward-mode hypergradient).

Tangents Z_k = d s_k / d x (one column per coordinate of x, for every tensor of the dynamics state s) are
pushed forward with the iterate,

    Z_{k+1} = A_k Z_k + B_k,   A_k = d Phi_k / d s,  B_k = d Phi_k / d x,
    d phi_K / dx = grad_x F + Z_K^T grad_y F.

Each step's Jacobian-vector products are taken with the double-vjp identity ``J u = d/dw <J^T w, u>`` on
that step's local tape, which is freed before the next step: memory does not grow with K (no trajectory is
stored) and the same code serves every dynamics. Cost per step: one taped step, one vector-Jacobian product
with a tape and one backward pass per coordinate of x, i.e. ~ dim(x) times a reverse-mode step; meant for
a few hyperparameters (weight decay, step sizes). Equal to RHG to round-off.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from ..dynamics.base import Dynamics, run
from ..problem import Problem
from .base import Estimate, check_finite, grads_or_zeros


def _step_with_tangents(dyn: Dynamics, k: int, x: torch.Tensor, state: Tuple[torch.Tensor, ...],
                        tangents: List[torch.Tensor]) -> Tuple[Tuple[torch.Tensor, ...], List[torch.Tensor],
                                                              torch.Tensor]:
    """One step of the dynamics and of its tangents (``tangents[j]`` has shape (dim x, numel state[j]))."""
    n_dir = x.numel()
    with torch.enable_grad():
        xl = x.detach().requires_grad_()
        sl = [s.detach().requires_grad_() for s in state]
        new, g = dyn.step(k, xl, tuple(sl), True)
        ws = [torch.zeros_like(o, requires_grad=True) for o in new]
        vjp = grads_or_zeros(new, [xl] + sl, grad_outputs=ws, create_graph=True)
        live = [i for i, v in enumerate(vjp) if v.requires_grad]
        out = [torch.empty(n_dir, o.numel(), dtype=o.dtype, device=o.device) for o in new]
        eye = torch.eye(n_dir, dtype=x.dtype, device=x.device)
        for i in range(n_dir):
            dirs = [eye[i]] + [t[i] for t in tangents]
            if live:
                cols = grads_or_zeros([vjp[j] for j in live], ws, grad_outputs=[dirs[j] for j in live],
                                      retain_graph=i < n_dir - 1)
            else:
                cols = [torch.zeros_like(w) for w in ws]
            for o, c in zip(out, cols):
                o[i] = c
    return tuple(o.detach() for o in new), out, g.detach()


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             wrt_init: bool = False) -> Estimate:
    """Gradient of F(x, y_K(x)) by forward propagation of d y_k / d x."""
    if wrt_init:
        raise ValueError("fhg does not differentiate the initialization; use rhg or an IA method")
    x = x.detach()
    state = tuple(s.detach() for s in dyn.init(x, y0.detach()))
    tangents = [torch.zeros(x.numel(), s.numel(), dtype=s.dtype, device=s.device) for s in state]
    g0 = g = None
    for k in range(steps):
        state, tangents, g = _step_with_tangents(dyn, k, x, state, tangents)
        if g0 is None:
            g0 = g
    # Non-finite iterates are located by the graph-free replay of `run`.
    check = state[0]
    if not bool(torch.isfinite(check).all()):
        run(dyn, x, dyn.init(x, y0.detach()), 0, steps, create_graph=False)
    with torch.enable_grad():
        xl = x.clone().requires_grad_()
        yl = state[0].clone().requires_grad_()
        upper = problem.upper(xl, yl)
        check_finite(upper.detach(), f"the upper objective after {steps} inner steps")
        gx, gy = grads_or_zeros(upper, (xl, yl))
    grad = gx + tangents[0] @ gy
    info = {"upper": upper.detach()}
    if g0 is not None:
        info["lower_grad_norm_first"] = torch.linalg.vector_norm(g0)
        info["lower_grad_norm_last"] = torch.linalg.vector_norm(g)
    return Estimate(grad, None, state[0], info)
