"""Tape-free reverse mode: RHG's backward pass as an explicit loop of vector-Jacobian products of the steps.

With ``s_{k+1} = Phi_k(x, s_k)`` (the state s holds y and an optimizer's buffers), the reverse pass of RHG is

    s_bar_K = (grad_y F(x, y_K), 0, ...),   x_bar = grad_x F(x, y_K)
    (dx, s_bar_k) = (d Phi_k / d(x, s_k))^T s_bar_{k+1},   x_bar += dx,       k = K-1, ..., 0

For gradient descent ``Phi_k = y - lr grad_y f(x, y)`` this is ``v <- v - lr H_k v``, ``x_bar <- x_bar - lr J_k v``:
Hessian- and cross-vector products at the stored iterates. Each reverse step here is one ``torch.func.vjp`` of the
step's :class:`~bilevel.dynamics.base.Functional` form (a function of tensors), so no autograd tape of the unroll is
built: the forward pass stores the K states (or, with ``checkpoint=S``, every S-th one, and recomputes a segment
before reversing through it), and the result is the same as back-propagating through the tape (tested to 1e-10 in
float64).

Two engines run this loop: ``engine="tape_free"`` calls the step functions eagerly; ``engine="compiled"`` calls them
through ``torch.compile``, ``compile_block`` steps per graph (forward and reverse blocks; an unroll of at most one
block, without checkpointing, is one graph: forward, ``grad F`` and reverse). The per-step numbers enter as a tensor,
so one graph serves every k. This removes the per-operation dispatch of eager PyTorch. The first call compiles
(seconds to a minute); later calls with objectives of the same code and shapes reuse the graphs.

Cost: K forward steps and K reverse steps, each reverse step about one Hessian-vector product (two for aggregation
steps); memory K states (``checkpoint=S``: K/S + S states, and one more forward pass over the first K - S steps).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Tuple

import torch

from .._validate import check_checkpoint, check_int
from ..dynamics.base import Dynamics, State, _locate_nonfinite, nonfinite_kind
from ..problem import Problem, value_and_grads
from . import reverse
from .base import Estimate, check_finite

#: the engines of the unrolled reverse-mode methods: "autograd" (the tape), "tape_free", "compiled"
ENGINES = ("autograd", "tape_free", "compiled")


def check_engine(engine: Any, problem: Problem, dyn: Dynamics, compile_step: bool = False) -> str:
    """The ``engine`` option, checked against what the problem and the dynamics support."""
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    if engine == "autograd":
        return engine
    if problem.buffers is not None or problem.batches is not None:
        raise ValueError(f"engine={engine!r} cannot carry module buffers or mini-batches (their per-step side state "
                         "is not traced); use engine='autograd'")
    if dyn.functional is None:
        raise ValueError(f"engine={engine!r} needs inner dynamics with a functional form (gradient descent, the "
                         "inner optimizers, aggregation); use engine='autograd'")
    if compile_step:
        raise ValueError(f"compile_step=True belongs to engine='autograd' (it compiles its graph-free steps); "
                         f"engine={engine!r} runs every step through its own functions: leave compile_step False")
    return engine


def check_block(compile_block: Any, engine: str) -> Optional[int]:
    """The ``compile_block`` option: None (default :data:`DEFAULT_BLOCK`) or an int >= 1, with engine 'compiled'."""
    if compile_block is None:
        return None
    if engine != "compiled":
        raise ValueError(f"compile_block sets the steps per graph of engine='compiled'; engine={engine!r} compiles "
                         "nothing (leave compile_block None)")
    return check_int("compile_block", compile_block, 1)


def reverse_estimator(engine: str, compile_block: Optional[int] = None) -> Callable[..., Estimate]:
    """The reverse-mode estimator of an engine: the autograd tape (:func:`bilevel.estimators.reverse.estimate`) or
    this module's loop, eager or compiled (``compile_block`` steps per graph)."""
    if engine == "autograd":
        return reverse.estimate
    return functools.partial(estimate, compiled=engine == "compiled", compile_block=compile_block)


def _forward_block(update: Callable, keys: Tuple[Any, ...], x: torch.Tensor, state: State, table: torch.Tensor):
    """Steps of forms ``keys`` (numbers: the rows of ``table``) from ``state``: ``(the states after each step, first
    gradient, last gradient)``."""
    states, first, g = [], None, None
    for i, key in enumerate(keys):
        state, g = update(key, x, state, table[i])
        states.append(state)
        first = g if first is None else first
    return states, first, g


def _reverse_block(update: Callable, keys: Tuple[Any, ...], x: torch.Tensor, states: Tuple[State, ...],
                   table: torch.Tensor, bar: State):
    """The reverse of those steps (``states``: the state before each): ``(x_bar increment, s_bar before them)``;
    each step one vector-Jacobian product."""
    dx_sum = None
    for i in reversed(range(len(keys))):
        _, pullback, _ = torch.func.vjp(lambda a, s, key=keys[i], num=table[i]: update(key, a, s, num), x, states[i],
                                        has_aux=True)
        dx, bar = pullback(bar)
        dx_sum = dx if dx_sum is None else dx_sum + dx
    return dx_sum, bar


def _whole(update: Callable, upper: Callable, keys: Tuple[Any, ...], x: torch.Tensor, state: State,
           table: torch.Tensor):
    """A short unroll in one graph: the forward steps, ``grad F`` at the end, and the reverse steps. Returns
    ``(x_bar, s_bar_0, y_K, F, first gradient, last gradient, final state)``."""
    states, first, last = _forward_block(update, keys, x, state, table)
    y = states[-1][0]
    (gx, gy), value = torch.func.grad_and_value(upper, argnums=(0, 1))(x, y)
    bar = (gy,) + tuple(torch.zeros_like(t) for t in states[-1][1:])
    dx, bar = _reverse_block(update, keys, x, (state,) + tuple(states[:-1]), table, bar)
    return gx + dx, bar, y, value, first, last, states[-1]


#: graphs per compiled block function (torch._dynamo's default is 8, raised while the call runs): one per objective
#: code, dynamics, sequence of step forms, constant option values and shapes
RECOMPILE_LIMIT = 64

#: steps per compiled graph (``compile_block``'s default): per call, a compiled graph costs tens of microseconds
#: of Python (guards, wrappers), which dominates small problems unless several steps share a call; compile time
#: grows with the block
DEFAULT_BLOCK = 16


@functools.lru_cache(maxsize=None)
def _compiled() -> Tuple[Callable, Callable, Callable]:
    """The compiled forward and reverse blocks and the one-graph short unroll (built on first use, so that importing
    the library does not import the compiler). Dynamo guards on ``update`` and ``keys``: one graph per objective
    code, dynamics, sequence of step forms, constant options and shapes. Past :data:`RECOMPILE_LIMIT` graphs per
    process the extra ones run eagerly, with dynamo's warning, and give the same numbers; so do steps that do not
    trace (``fullgraph`` is off)."""
    return (torch.compile(_forward_block, dynamic=False), torch.compile(_reverse_block, dynamic=False),
            torch.compile(_whole, dynamic=False))


def estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, *,
             wrt_init: bool = False, start: int = 0, state: Optional[State] = None,
             checkpoint: Optional[int] = None, compiled: bool = False,
             compile_block: Optional[int] = None) -> Estimate:
    """Exact gradient of F(x, y_K(x, y0)) w.r.t. x (and y0 when ``wrt_init``), by the explicit reverse loop.

    Same contract as :func:`bilevel.estimators.reverse.estimate` (``start``/``state``: resume the unroll at step
    ``start``, the earlier steps being constants, as truncation does). ``compiled`` runs the steps through
    ``torch.compile``, ``compile_block`` (default :data:`DEFAULT_BLOCK`) of them per graph.
    """
    checkpoint = check_checkpoint(checkpoint)
    if dyn.functional is None:
        raise ValueError("the tape-free engines need dynamics with a functional form (dynamics.base.Functional)")
    block = DEFAULT_BLOCK if compile_block is None else compile_block
    if compiled:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return _estimate(problem, dyn, x, y0, steps, wrt_init, start, state, checkpoint, block, *_compiled())
    return _estimate(problem, dyn, x, y0, steps, wrt_init, start, state, checkpoint, block, _forward_block,
                     _reverse_block, None)


def _estimate(problem: Problem, dyn: Dynamics, x: torch.Tensor, y0: torch.Tensor, steps: int, wrt_init: bool,
              start: int, state: Optional[State], checkpoint: Optional[int], block: int, fwd: Callable,
              rev: Callable, whole: Optional[Callable]) -> Estimate:
    fn = dyn.functional
    x = x.detach()
    s = dyn.init(x, y0.detach()) if state is None else (y0.detach(),) + tuple(t.detach() for t in state[1:])
    keys: List[Any] = []
    rows: List[Tuple[float, ...]] = []
    for k in range(start, steps):
        key, nums = fn.coefficients(k)
        keys.append(key)
        rows.append(tuple(float(c) for c in nums))
    width = max((len(r) for r in rows), default=0)  # one row of numbers per step, zero-padded
    table = torch.tensor([r + (0.0,) * (width - len(r)) for r in rows], dtype=x.dtype,
                         device=x.device).reshape(len(rows), width)
    n = len(keys)
    every = checkpoint or max(n, 1)
    segments = [(lo, min(lo + every, n)) for lo in range(0, n, every)]

    def blocks(lo: int, hi: int):
        return [(b, min(b + block, hi)) for b in range(lo, hi, block)]

    def forward(lo: int, hi: int, s0: State):
        """The states before steps lo..hi (hi - lo + 1 of them) and the first and last gradients."""
        out, first, last = [s0], None, None
        for b, e in blocks(lo, hi):
            states, g0, last = fwd(fn.update, tuple(keys[b:e]), x, out[-1], table[b:e])
            out.extend(states)
            first = g0 if first is None else first
        return out, first, last

    if whole is not None and 0 < n <= block and checkpoint is None:
        with torch.no_grad():
            x_bar, bar, y, upper, first, last, s = whole(fn.update, problem.upper, tuple(keys), x, s, table)
        if nonfinite_kind(upper.reshape(1)) is not None or nonfinite_kind(x_bar) is not None:
            return _estimate(problem, dyn, x, y0, steps, wrt_init, start, state, checkpoint, block,
                             _forward_block, _reverse_block, None)  # the eager loop names what went wrong
        return _result(x_bar, bar, y, upper, first, last, wrt_init)
    with torch.no_grad():
        kept = {}  # segment start -> its states (the first state only, except for the last segment)
        first = last = None
        for i, (lo, hi) in enumerate(segments):
            states, g0, last = forward(lo, hi, s)
            first = g0 if first is None else first
            kept[lo] = states if i == len(segments) - 1 else states[:1]
            s = states[-1]
        if n and nonfinite_kind(s[0]) is not None:
            _locate_nonfinite(dyn, x, kept[0][0], start, steps, steps)
        y = s[0]
        upper, gx, gy = value_and_grads(problem.upper, x, y)
        check_finite(upper, f"the upper objective after {steps} inner steps")
        bar: State = (gy,) + tuple(torch.zeros_like(t) for t in s[1:])
        x_bar = gx
        for lo, hi in reversed(segments):
            states = kept.pop(lo)
            if len(states) == 1:  # recompute the segment
                states = forward(lo, hi, states[0])[0]
            for b, e in reversed(blocks(lo, hi)):
                dx, bar = rev(fn.update, tuple(keys[b:e]), x, tuple(states[b - lo:e - lo]), table[b:e], bar)
                x_bar = x_bar + dx
    return _result(x_bar, bar, y, upper, first, last, wrt_init)


def _result(x_bar, bar, y, upper, first, last, wrt_init) -> Estimate:
    info: dict = {"upper": upper.detach()}
    if first is not None:
        info["lower_grad_norm_first"] = torch.linalg.vector_norm(first)
        info["lower_grad_norm_last"] = torch.linalg.vector_norm(last)
    return Estimate(x_bar, bar[0] if wrt_init else None, y, info)
