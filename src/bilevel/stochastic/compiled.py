"""The compiled engine of the stochastic solvers: blocks of outer iterations as one ``torch.compile`` graph.

Eager PyTorch pays a fixed dispatch cost per operation, which dominates the small mini-batch steps of these methods
(hundreds of microseconds per iteration, most of it Python and autograd bookkeeping). With
``StochasticLoop(..., compile_block=B)`` the loop runs ``B`` iterations at a time through one compiled function:

* the oracles are written with ``torch.func`` (``grad`` and ``vjp``: the fused ``(grad_y f, H v, J v)`` is one
  ``vjp`` of ``y -> grad_y f``), which ``torch.compile`` traces into the graph;
* the batches of the block are drawn beforehand from the same samplers, in the same order, and stacked, so the block
  sees exactly the batches the eager loop would (every batch must then have the same size: ``batch_size`` divides
  ``n_lower`` and ``n_upper``);
* the iteration counter enters as a tensor, so one graph serves every block.

The result equals the eager loop's to round-off (the compiled kernels may sum in another order; tested). Oracle
counts are those of the eager loop: before the first block, one eager iteration on a copy of the state (samplers put
back afterwards) measures the draws and counts of an iteration, which every compiled one repeats. Compiling costs seconds to a minute, growing with ``B`` and the method's number of oracle calls
per iteration: :attr:`CompiledBlocks.compile_seconds` records the first block's wall time (its compilation included),
which the loop keeps out of its ``elapsed`` time. Methods whose step branches on the iteration count or on random
draws are not supported (:data:`SUPPORTED`).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

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
    """A sampler that hands out the batches stacked before the block, in order."""

    def __init__(self, n: int, batch_size: int):
        self.w = batch_size / n
        self.idx: Optional[torch.Tensor] = None
        self.pos = 0

    def draw(self):
        i = self.pos
        self.pos += 1
        return self.idx[i], 0

    def weight(self, b: int) -> float:
        return self.w


class CompiledBlocks:
    """Runs ``block`` iterations of a :class:`~bilevel.stochastic.StochasticLoop` per call of one compiled graph."""

    def __init__(self, loop: Any, block: int, options: Dict[str, Any]):
        name = loop.method.name
        if name not in SUPPORTED:
            raise ValueError(f"compile_block is available for {', '.join(SUPPORTED)}; {name!r} branches on the "
                             "iteration count or draws its own random numbers; leave compile_block=None")
        ctx = loop.ctx
        for which, s in (("n_lower", ctx.inner), ("n_upper", ctx.outer)):
            if s.n % s.batch_size:
                raise ValueError(f"compile_block needs batches of one size: batch_size {s.batch_size} must divide "
                                 f"{which} = {s.n}")
        o = loop.oracles
        self.oracles = FuncOracles(o._upper, o._lower, o.x_spec, o.y_spec, o.n_upper, o.n_lower, o._split, o._reduce)
        self.inner, self.outer = _Replay(ctx.inner.n, ctx.inner.batch_size), _Replay(ctx.outer.n, ctx.outer.batch_size)
        fctx = Context(self.oracles, self.inner, self.outer, ctx.noise, ctx.batch_size)
        cfg = loop.config
        self.solver = loop.method.bind(fctx, cfg["inner_lr"], cfg["outer_lr"], options)
        self.block = block
        self.per_step: Optional[Dict[str, int]] = None  # draws and oracle counts of one iteration
        self.compile_seconds: Optional[float] = None
        self._fn = torch.compile(self._run, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)

    def _run(self, state: State, idx_in: torch.Tensor, idx_out: torch.Tensor, t0: torch.Tensor) -> State:
        self.inner.idx, self.inner.pos = idx_in, 0
        self.outer.idx, self.outer.pos = idx_out, 0
        for i in range(self.block):
            state = self.solver.step(state, t0 + i)
        return state

    def learn(self, loop: Any) -> None:
        """Record the draws and counts of one iteration: an eager iteration on a copy of the state, after which the
        samplers, the generator and the counts are put back (so the run's own iterations are all compiled, and a
        resumed run compiles the same ones)."""
        ctx = loop.ctx
        saved = ctx.inner.state_dict(), ctx.outer.state_dict(), ctx.noise.get_state(), dict(loop.oracles.calls)
        before = self._counters(loop)
        with torch.no_grad():
            loop.solver.step({k: v.clone() for k, v in loop.state.items()}, loop.t + 1)
        now = self._counters(loop)
        self.per_step = {k: now[k] - before[k] for k in now}
        ctx.inner.load_state_dict(saved[0])
        ctx.outer.load_state_dict(saved[1])
        ctx.noise.set_state(saved[2])
        loop.oracles.calls.update(saved[3])

    @staticmethod
    def _counters(loop: Any) -> Dict[str, int]:
        return {"in": loop.ctx.inner.draws, "out": loop.ctx.outer.draws, **loop.oracles.calls}

    def run_block(self, loop: Any) -> float:
        """One block from the loop's state; returns the seconds it took (0 for the first, compiling, call)."""
        if self.per_step is None:
            self.learn(loop)
        per, ctx, B = self.per_step, loop.ctx, self.block
        start = time.perf_counter()
        idx_in = ctx.inner.draw_many(B * per["in"])
        idx_out = ctx.outer.draw_many(B * per["out"])
        t0 = torch.tensor(float(loop.t + 1), dtype=loop.state["x"].dtype, device=loop.state["x"].device)
        loop.state = self._fn(loop.state, idx_in, idx_out, t0)
        for k in ("inner", "outer"):
            loop.oracles.calls[k] += B * per[k]
        seconds = time.perf_counter() - start
        if self.compile_seconds is None:
            self.compile_seconds = seconds
            return 0.0
        return seconds
