"""The pieces every stochastic solver shares: its context, its (init, step) pair, and the inner routines.

A solver is ``Solver(init, step)``, optax style: ``init(x, y) -> state`` and ``step(state, t) -> state`` for outer
iteration ``t = 1, 2, ...``, where ``state`` is a dict of tensors holding at least ``"x"`` and ``"y"`` (flat) plus
whatever the method carries: the linear-system variable ``v``, memories, momenta, previous points. A named method
(:mod:`bilevel.stochastic.registry`) builds it from a :class:`Context` and its keyword-only options.

Conventions of every solver: ``v`` approximates ``[d2_yy f]^{-1} grad_y F`` and the outer direction is
``grad_x F - J v`` (``J v = d2_xy f v``), the implicit-function hypergradient when y and v are exact. Step sizes
decay as ``c / t**e`` with the exponents of each method's paper.

The inner routines below are one function each, with their cost in oracle calls (``B``: one mini-batch):

* :func:`sgd_inner` -- ``steps`` SGD steps on f, a fresh batch each: ``steps`` gradients.
* :func:`neumann` -- ``eta * sum_{k=0}^{Q} prod_{j<=k} (I - eta H_{B_j}) r``, ``Q`` fresh batches: ``Q`` HVPs.
* :func:`neumann_pair` -- the same for two systems on shared batches: ``2Q`` HVPs.
* :func:`random_neumann` -- ``Q eta prod_{j<=p} (I - eta H_{B_j}) r`` with ``p ~ U{0..Q-1}``: an unbiased estimate
  of the series truncated at ``Q - 1`` terms, ``p`` HVPs (mean ``(Q-1)/2``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from .._validate import check_float, check_int
from .oracles import Oracles
from .sampler import BatchSampler

Tensor = torch.Tensor
State = Dict[str, Tensor]


class Solver(NamedTuple):
    """``init(x, y) -> state``; ``step(state, t) -> state`` (a new dict; large memories are updated in place)."""

    init: Callable[[Tensor, Tensor], State]
    step: Callable[[State, int], State]


@dataclass
class Context:
    """What a solver draws on: the oracles, one sampler per objective and a generator for its own randomness."""

    oracles: Oracles
    inner: BatchSampler
    outer: BatchSampler
    noise: torch.Generator
    batch_size: int

    @property
    def n_lower(self) -> int:
        return self.oracles.n_lower

    @property
    def n_upper(self) -> int:
        return self.oracles.n_upper


def decay(c: float, e: float, t: int) -> float:
    """``c / t**e``."""
    return c / t ** e if e else c


def sgd_inner(ctx: Context, x: Tensor, y: Tensor, lr: float, steps: int) -> Tensor:
    """``steps`` times: a fresh inner batch B, ``y <- y - lr grad_y f_B(x, y)``."""
    for _ in range(steps):
        idx, _ = ctx.inner.draw()
        y = y - lr * ctx.oracles.grad_lower_y(x, y, idx)
    return y


def gd_inner(ctx: Context, x: Tensor, y: Tensor, lr: float, steps: int) -> Tensor:
    """``steps`` full-batch gradient steps on f."""
    for _ in range(steps):
        y = y - lr * ctx.oracles.grad_lower_y(x, y, None)
    return y


def neumann(ctx: Context, x: Tensor, y: Tensor, r: Tensor, eta: float, q: int) -> Tensor:
    """``eta * sum_{k=0}^{q} prod_{j=1}^{k} (I - eta H_{B_j}) r``: q fresh batches, q HVPs."""
    term, total = r, r
    for _ in range(q):
        idx, _ = ctx.inner.draw()
        term = term - eta * ctx.oracles.hvp(x, y, term, idx)
        total = total + term
    return eta * total


def neumann_full(ctx: Context, x: Tensor, y: Tensor, r: Tensor, eta: float, q: int) -> Tensor:
    """:func:`neumann` with the full-batch Hessian."""
    term, total = r, r
    for _ in range(q):
        term = term - eta * ctx.oracles.hvp(x, y, term, None)
        total = total + term
    return eta * total


def neumann_pair(ctx: Context, a: Tuple[Tensor, Tensor, Tensor], b: Tuple[Tensor, Tensor, Tensor], eta: float,
                 q: int) -> Tuple[Tensor, Tensor]:
    """:func:`neumann` for two systems ``(x, y, r)`` on the same q batches."""
    (xa, ya, ta), (xb, yb, tb) = a, b
    sa, sb = ta, tb
    for _ in range(q):
        idx, _ = ctx.inner.draw()
        ta = ta - eta * ctx.oracles.hvp(xa, ya, ta, idx)
        tb = tb - eta * ctx.oracles.hvp(xb, yb, tb, idx)
        sa, sb = sa + ta, sb + tb
    return eta * sa, eta * sb


def draw_depth(ctx: Context, q: int) -> int:
    """``p ~ U{0, ..., q-1}`` from the solver's generator."""
    return int(torch.randint(q, (), generator=ctx.noise))


def random_neumann(ctx: Context, x: Tensor, y: Tensor, r: Tensor, eta: float, q: int,
                   p: Optional[int] = None) -> Tensor:
    """``q * eta * prod_{j=1}^{p} (I - eta H_{B_j}) r`` with ``p ~ U{0..q-1}``: p fresh batches, p HVPs."""
    p = draw_depth(ctx, q) if p is None else p
    for _ in range(p):
        idx, _ = ctx.inner.draw()
        r = r - eta * ctx.oracles.hvp(x, y, r, idx)
    return q * eta * r


def random_neumann_pair(ctx: Context, a: Tuple[Tensor, Tensor, Tensor], b: Tuple[Tensor, Tensor, Tensor], eta: float,
                        q: int) -> Tuple[Tensor, Tensor]:
    """:func:`random_neumann` for two systems, with one p and the same batches."""
    (xa, ya, ra), (xb, yb, rb) = a, b
    for _ in range(draw_depth(ctx, q)):
        idx, _ = ctx.inner.draw()
        ra = ra - eta * ctx.oracles.hvp(xa, ya, ra, idx)
        rb = rb - eta * ctx.oracles.hvp(xb, yb, rb, idx)
    return q * eta * ra, q * eta * rb


def neumann_options(who: str, n_neumann_steps: int, neumann_lr: Optional[float], inner_lr: float,
                    low: int = 0) -> Tuple[int, float]:
    """The checked ``(Q, eta)`` of a method's Neumann series: ``eta`` defaults to ``inner_lr``."""
    q = check_int("n_neumann_steps", n_neumann_steps, low, who=who)
    return q, inner_lr if neumann_lr is None else check_float("neumann_lr", neumann_lr, positive=True)


def check_memory(name: str, nbytes: int, max_memory_mb: float) -> None:
    """Refuse memories larger than ``max_memory_mb``, naming their size."""
    if nbytes > max_memory_mb * 2 ** 20:
        raise ValueError(f"{name}'s per-sample memories need {nbytes / 2 ** 20:.1f} MiB, more than max_memory_mb="
                         f"{max_memory_mb:g}; raise max_memory_mb or choose a method without per-sample "
                         "memories (soba, srba)")
