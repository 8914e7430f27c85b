"""The compiled engine of the stochastic solvers: blocks of outer iterations as one ``torch.compile`` graph.

Eager PyTorch pays a fixed dispatch cost per operation, which dominates the small mini-batch steps of these methods
(hundreds of microseconds per iteration, most of it Python and autograd bookkeeping). With
``StochasticLoop(..., compile_block=B)`` the loop runs ``B`` iterations at a time through one compiled function:

* the oracles are written with ``torch.func`` (``grad`` and ``vjp``: the fused ``(grad_y f, H v, J v)`` is one
  ``vjp`` of ``y -> grad_y f``), which ``torch.compile`` traces into the graph;
* the batches of the block are drawn beforehand from the same samplers, in the same order, and stacked, so the block
  sees exactly the batches the eager loop would;
* when ``batch_size`` does not divide ``n``, an iteration that draws the smaller last batch runs eagerly, and the
  runs of full-batch iterations around it go through graphs of power-of-two lengths (once per epoch of a sampler;
  up to ``log2(B) + 1`` extra graphs, each compiled the first time it is needed, that time kept out of ``elapsed``);
* the iteration counter enters as a tensor, so one graph serves every block.

The result equals the eager loop's to round-off (the compiled kernels may sum in another order; tested). Oracle
counts are those of the eager loop: before the first block, a probe iteration on a copy of the state, whose
samplers hand out the first batch, measures the draws and counts of an iteration on full batches, which every
compiled one repeats (the eager ones count themselves). Compiling costs seconds to minutes, growing with ``B`` and
the method's number of oracle calls per iteration: :attr:`CompiledBlocks.compile_seconds` records the wall time of
the calls that compiled a graph (the first block's, compilation included), which the loop keeps out of its
``elapsed`` time. Methods whose step branches on the iteration count or on random
draws are not supported (:data:`SUPPORTED`).
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import torch

from .base import Context, State
from .oracles import Oracles

__all__ = ["SUPPORTED", "FuncOracles", "CompiledBlocks"]

#: methods whose iterations trace into one graph (no branch on t, no draw of their own generator)
SUPPORTED = ("soba", "saba", "amigo", "stocbio")

#: inductor settings of the block's graph. ``realize_reads_threshold=1`` stores every intermediate read more than once
#: (e.g. the rows a batch gathers) instead of recomputing it inside each consumer: inlined into a reduction over the
#: batch, a gather becomes a strided indirect load per element; stored once, the reductions read contiguous rows.
#: Measured on the quadratic (dim 100, batch 64, float32, 1 thread): 65 -> 32 us per SOBA iteration in the kernel.
#: ``cpp_wrapper=True`` generates the graph's wrapper (buffer allocation, calls of the kernels and of the BLAS
#: products) in C++ instead of Python: a block of B iterations makes tens of such calls per iteration. Measured on
#: datacleaning (batch 64, 1 thread, block 16): 355 -> 245 us per SOBA iteration.
INDUCTOR_OPTIONS = {"realize_reads_threshold": 1, "cpp_wrapper": True}


class FuncOracles(Oracles):
    """:class:`~bilevel.stochastic.oracles.Oracles` through ``torch.func`` (traceable), without call counts."""

    def _count(self, which: str, idx: Optional[torch.Tensor], times: int) -> None:
        pass

    def _grads(self, fn, x, y, idx, name, n, need_x):
        local, w = self._local(idx, n)
        gx, gy = torch.func.grad(lambda a, b: self._f(fn, a, b, local, name), argnums=(0, 1))(x, y)
        return self._sum((gx, gy), w)

    def _vjp(self, x, y, v, idx, need_h, need_j):
        local, w = self._local(idx, self.n_lower)

        def grad_y(a, b):
            return torch.func.grad(lambda bb: self._f(self._lower, a, bb, local, "lower"))(b)

        g, pullback = torch.func.vjp(grad_y, x, y)
        jv, hv = pullback(v)
        return self._sum((g, hv, jv), w)


class _Replay:
    """A sampler that hands out given batches in order: the stacked batches of a compiled run (weight ``batch / n``
    each), or a list of batches and their weights (an eager iteration that draws the smaller last batch)."""

    def __init__(self, n: int, batch_size: int):
        self.w = batch_size / n
        self.idx: Any = None
        self.weights: Optional[List[float]] = None
        self.pos = 0

    def load(self, idx: Any, weights: Optional[List[float]] = None) -> None:
        self.idx, self.weights, self.pos = idx, weights, 0

    def draw(self):
        i = self.pos
        self.pos += 1
        return self.idx[i], i

    def weight(self, b: int) -> float:
        return self.w if self.weights is None else self.weights[b]


class _Probe:
    """A sampler that hands out the first (full) batch and counts the draws: one probe iteration measures the draws
    and oracle counts of an iteration on full batches."""

    def __init__(self, sampler: Any):
        self.b0, self.w0 = sampler.batch(0), sampler.weight(0)
        self.draws = 0

    def draw(self):
        self.draws += 1
        return self.b0, 0

    def weight(self, b: int) -> float:
        return self.w0


class CompiledBlocks:
    """Runs ``block`` iterations of a :class:`~bilevel.stochastic.StochasticLoop` per call of one compiled graph.

    When ``batch_size`` does not divide ``n``, the iterations that draw the smaller last batch run eagerly (on the
    loop's own oracles, which count them), and the runs of full-batch iterations between them go through graphs
    of power-of-two lengths (at most ``log2(block) + 1`` more graphs, each compiled once)."""

    def __init__(self, loop: Any, block: int, options: Dict[str, Any]):
        name = loop.method.name
        if name not in SUPPORTED:
            raise ValueError(f"compile_block is available for {', '.join(SUPPORTED)}; {name!r} branches on the "
                             "iteration count or draws its own random numbers; leave compile_block=None")
        ctx, o = loop.ctx, loop.oracles
        self.options = options
        self.oracles = FuncOracles(o._upper, o._lower, o.x_spec, o.y_spec, o.n_upper, o.n_lower, o._split, o._reduce)
        self.inner, self.outer = _Replay(ctx.inner.n, ctx.inner.batch_size), _Replay(ctx.outer.n, ctx.outer.batch_size)
        self.solver = self._bind(loop, self.oracles, self.inner, self.outer)
        self.eager_in, self.eager_out = _Replay(ctx.inner.n, ctx.inner.batch_size), _Replay(ctx.outer.n,
                                                                                          ctx.outer.batch_size)
        self.eager = self._bind(loop, o, self.eager_in, self.eager_out)  # iterations with a smaller batch, counted
        self.block = block
        self.per_step: Optional[Dict[str, int]] = None  # draws and oracle counts of one iteration
        self.compile_seconds: Optional[float] = None
        self._lengths: set = set()  # the run lengths compiled so far
        self._fn = torch.compile(self._run, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)

    def _bind(self, loop: Any, oracles: Any, inner: Any, outer: Any) -> Any:
        """The loop's method and options on ``oracles`` and the samplers ``inner`` / ``outer``."""
        cfg = loop.config
        return loop.method.bind(Context(oracles, inner, outer, loop.ctx.noise, loop.ctx.batch_size),
                                cfg["inner_lr"], cfg["outer_lr"], self.options)

    def _run(self, state: State, idx_in: torch.Tensor, idx_out: torch.Tensor, t0: torch.Tensor, steps: int) -> State:
        self.inner.load(idx_in)
        self.outer.load(idx_out)
        for i in range(steps):
            state = self.solver.step(state, t0 + i)
        return state

    def learn(self, loop: Any) -> None:
        """Record the draws and counts of one iteration on full batches: a probe iteration on a copy of the state,
        whose samplers hand out the first batch (the loop's samplers are not touched; the counts are put back)."""
        ctx = loop.ctx
        probe_in, probe_out = _Probe(ctx.inner), _Probe(ctx.outer)
        noise, calls = ctx.noise.get_state(), dict(loop.oracles.calls)
        probe = self._bind(loop, loop.oracles, probe_in, probe_out)
        with torch.no_grad():
            probe.step({k: v.clone() for k, v in loop.state.items()}, loop.t + 1)
        self.per_step = {"in": probe_in.draws, "out": probe_out.draws,
                         **{k: loop.oracles.calls[k] - calls[k] for k in calls}}
        ctx.noise.set_state(noise)
        loop.oracles.calls.update(calls)

    def _has_partial(self, ids: torch.Tensor, sampler: Any, per: int) -> List[bool]:
        """Per iteration of the block: does it draw ``sampler``'s smaller last batch?"""
        if sampler.partial is None or per == 0:
            return [False] * self.block
        return (ids.view(self.block, per) == sampler.partial).any(1).tolist()

    def run_block(self, loop: Any) -> float:
        """One block from the loop's state; returns the seconds it took, less the calls that compiled a graph
        (the first block's time is :attr:`compile_seconds`)."""
        if self.per_step is None:
            self.learn(loop)
        per, ctx, B = self.per_step, loop.ctx, self.block
        pi, po = per["in"], per["out"]
        start, compiling = time.perf_counter(), 0.0
        ids_in, ids_out = ctx.inner.draw_ids(B * pi), ctx.outer.draw_ids(B * po)
        partial = [a or b for a, b in zip(self._has_partial(ids_in, ctx.inner, pi),
                                          self._has_partial(ids_out, ctx.outer, po))]
        i = 0
        while i < B:
            if partial[i]:
                self._eager_iteration(loop, ids_in[i * pi:(i + 1) * pi], ids_out[i * po:(i + 1) * po], loop.t + 1 + i)
                i += 1
                continue
            j = partial.index(True, i) if True in partial[i:] else B
            L = B if j - i == B else 1 << ((j - i).bit_length() - 1)
            t_call = time.perf_counter()
            t0 = torch.tensor(float(loop.t + 1 + i), dtype=loop.state["x"].dtype, device=loop.state["x"].device)
            loop.state = self._fn(loop.state, ctx.inner.rows(ids_in[i * pi:(i + L) * pi]),
                                  ctx.outer.rows(ids_out[i * po:(i + L) * po]), t0, L)
            for k in ("inner", "outer"):
                loop.oracles.calls[k] += L * per[k]
            if L not in self._lengths:
                self._lengths.add(L)
                compiling += time.perf_counter() - t_call
            i += L
        seconds = time.perf_counter() - start
        if self.compile_seconds is None:
            self.compile_seconds = seconds
            return 0.0
        self.compile_seconds += compiling
        return seconds - compiling

    def _eager_iteration(self, loop: Any, ids_in: torch.Tensor, ids_out: torch.Tensor, t: int) -> None:
        """One iteration on the given batch ids (one of them the smaller last batch), eagerly, counted."""
        for rep, sampler, ids in ((self.eager_in, loop.ctx.inner, ids_in), (self.eager_out, loop.ctx.outer, ids_out)):
            bs = [int(b) for b in ids]
            rep.load([sampler.batch(b) for b in bs], [sampler.weight(b) for b in bs])
        with torch.no_grad():
            loop.state = self.eager.step(loop.state, t)
