"""The inner-dynamics protocol and the loop that runs it.

A dynamics is a pair of pure functions in the style of optax's ``init``/``update``::

    state = dyn.init(x, y0)                         # a tuple of flat tensors; state[0] is the iterate y_k
    state, g = dyn.step(k, x, state, create_graph)  # k = 0..K-1; g is the lower-level gradient it used

Optionally ``dyn.functional`` (:class:`Functional`) gives the same step as a pure ``torch.func`` function, which the
tape-free engines differentiate step by step and can compile.

``create_graph=True`` keeps the step differentiable (reverse mode through the unroll); ``False`` makes it
a constant for the tape while forward-mode tangents still flow (forward mode, graph-free runs). Estimators
(:mod:`bilevel.estimators`) decide how the steps are run and differentiated; dynamics never know.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch

from ..errors import NonFiniteError

State = Tuple[torch.Tensor, ...]


class Functional(NamedTuple):
    """The same step as a pure function of tensors, for the tape-free engines (:mod:`bilevel.estimators.tape_free`).

    ``coefficients(k) -> (key, numbers)`` gives what step k depends on besides ``(x, state)``: a hashable ``key``
    that selects the step's form (e.g. a plain or an aggregated step; one compiled graph per key) and a tuple of
    floats (step sizes, bias corrections, weights), which the engine hands to ``update`` as a 1-D tensor
    (``numbers[i]`` are 0-dim tensors; rows may be zero-padded), so that one graph serves every k.
    ``update(key, x, state, numbers) -> (state, grad)`` is the step written with ``torch.func`` (no
    ``torch.autograd`` call, no Python branch on tensor values), so ``torch.func.vjp`` and ``torch.compile`` can
    trace it; it must equal ``step(k, x, state, False)`` to round-off. The state that
    ``init(x, y0)`` returns must be ``(y0, *constants)``.
    """

    coefficients: Callable[[int], Tuple[Any, Tuple[float, ...]]]
    update: Callable[[Any, torch.Tensor, State, Tuple[torch.Tensor, ...]], Tuple[State, torch.Tensor]]


class Dynamics(NamedTuple):
    """Inner dynamics: ``init(x, y0) -> state`` and ``step(k, x, state, create_graph) -> (state, grad)``, and
    optionally the step's :class:`Functional` form (None: only the autograd engine can differentiate it)."""

    init: Callable[[torch.Tensor, torch.Tensor], State]
    step: Callable[[int, torch.Tensor, State, bool], Tuple[State, torch.Tensor]]
    functional: Optional[Functional] = None


def with_buffers(dyn: Dynamics, buffers) -> Dynamics:
    """``dyn`` with a module's buffers carried through its steps (:class:`bilevel.models.Buffers`; None: ``dyn``).

    ``init`` begins a loop at the buffers' start; step k runs on the buffers recorded before it and records the
    ones it ends with, so a recomputed step (checkpointing, a second pass) replays exactly. The buffers are not
    part of the differentiated state.
    """
    if buffers is None:
        return dyn

    def init(x, y0):
        buffers.begin_loop()
        return dyn.init(x, y0)

    def step(k, x, state, create_graph):
        buffers.begin_step(k)
        try:
            return dyn.step(k, x, state, create_graph)
        finally:
            buffers.end_step(k)

    return Dynamics(init, step)


def with_step_state(dyn: Dynamics, problem) -> Dynamics:
    """``dyn`` carrying the problem's step-indexed side state: its module buffers and its mini-batch draws
    (:class:`bilevel.stochastic.MiniBatches`), both through :func:`with_buffers`' hooks."""
    return with_buffers(with_buffers(dyn, problem.buffers), problem.batches)


def nonfinite_kind(t: torch.Tensor) -> Optional[str]:
    """"nan", "inf" or None (one reduction and one host sync)."""
    if bool(torch.isfinite(t).all()):
        return None
    return "nan" if bool(torch.isnan(t).any()) else "inf"


def run(dyn: Dynamics, x: torch.Tensor, state: State, start: int, stop: int, *, create_graph: bool,
        info: Optional[Dict[str, object]] = None,
        on_step: Optional[Callable[[int, State], None]] = None, total: Optional[int] = None) -> State:
    """Run steps ``k = start..stop-1`` and return the final state.

    With ``create_graph=False`` the loop runs under ``torch.no_grad()`` (only the gradient evaluations
    inside each step use the tape, and free it at once). Finiteness is checked once at the end; if the
    final iterate is not finite the loop is replayed without a graph to name the first bad step.
    ``on_step(k, state)`` is called after step ``k`` (used by trajectory-based estimators). ``total``
    (default ``stop``) is the length of the whole unroll, for error messages.
    """
    initial = tuple(s.detach() for s in state)
    g_first = g_last = None
    ctx = contextlib.nullcontext() if create_graph else torch.no_grad()
    with ctx:
        for k in range(start, stop):
            state, g = dyn.step(k, x, state, create_graph)
            if g_first is None:
                g_first = g.detach()
            g_last = g
            if on_step is not None:
                on_step(k, state)
    if stop > start and nonfinite_kind(state[0]) is not None:
        _locate_nonfinite(dyn, x.detach(), initial, start, stop, stop if total is None else total)
    if info is not None and g_last is not None:
        info["lower_grad_norm_first"] = torch.linalg.vector_norm(g_first)
        info["lower_grad_norm_last"] = torch.linalg.vector_norm(g_last.detach())
    return state


def _locate_nonfinite(dyn: Dynamics, x: torch.Tensor, state: State, start: int, stop: int, total: int) -> None:
    with torch.no_grad():
        for k in range(start, stop):
            state, g = dyn.step(k, x, state, False)
            for what, t in (("lower-level gradient", g), ("iterate", state[0])):
                kind = nonfinite_kind(t)
                if kind is not None:
                    raise NonFiniteError(
                        f"{kind} in the inner loop: the {what} became {kind} at inner step {k + 1} of {total} "
                        "(reduce inner_lr or check the lower-level objective)")
    raise NonFiniteError(f"nan/inf in the inner loop between steps {start + 1} and {stop}")
