"""SABA (Dagreou et al., NeurIPS 2022): SOBA's five directions with SAGA variance reduction.

Each direction ``D`` (``grad_y f``, ``H v``, ``J v`` on the inner samples; ``grad_y F``, ``grad_x F`` on the outer
ones) keeps a memory row per sample and their mean ``m``. For a batch B with new value ``g_B``::

    d = g_B - M[B] + m,   m <- m + |B|/n (g_B - M[B]),   M[B] <- g_B

(in place; the rows of a batch are written together, so with the fixed batches of the sampler ``M[B]`` is the value last seen
for B, and ``batch_size=1`` is per-sample SAGA). Then, with constant steps::

    y <- y - rho d_grad,   v <- v - rho (d_Hv - d_FY),   x <- x - gamma (d_FX - d_Jv)

Cost per iteration: as SOBA (3 inner and 2 outer oracle calls per sample). Memory:
``n_lower (2 dim_y + dim_x) + n_upper (dim_y + dim_x)`` numbers, refused above ``max_memory_mb``.
"""
from __future__ import annotations

from ..base import Context, Solver, check_memory


def _saga(s, key, g, idx, w):
    old = s["mem_" + key][idx[:1]].squeeze(0)  # rows of one batch are equal; a slice keeps it traceable
    diff = g - old
    d = diff + s["avg_" + key]
    s["avg_" + key] = s["avg_" + key] + w * diff
    s["mem_" + key].index_copy_(0, idx, g.expand(idx.numel(), -1))  # in place: a copy would cost n x dim
    return d


def build(ctx: Context, inner_lr: float, outer_lr: float, *, max_memory_mb: float = 1024.0) -> Solver:
    o = ctx.oracles
    tables = {"g": "inner", "hv": "inner", "jv": "inner", "fy": "outer", "fx": "outer"}

    def rows(which):
        return ctx.n_lower if which == "inner" else ctx.n_upper

    def init(x, y):
        dims = {"g": y.numel(), "hv": y.numel(), "jv": x.numel(), "fy": y.numel(), "fx": x.numel()}
        nbytes = sum(rows(w) * dims[k] for k, w in tables.items()) * y.element_size()
        check_memory("saba", nbytes, max_memory_mb)
        s = {"x": x, "y": y, "v": y.new_zeros(y.shape)}
        for k, w in tables.items():
            s["mem_" + k] = y.new_zeros(rows(w), dims[k])
            s["avg_" + k] = y.new_zeros(dims[k])
        return s

    def step(s, t):
        s = dict(s)
        x, y, v = s["x"], s["y"], s["v"]
        b, bi = ctx.inner.draw()
        g, hv, jv = o.lower_vjp(x, y, v, b)
        ob, oi = ctx.outer.draw()
        fx, fy = o.grads_upper(x, y, ob)
        wb, wo = ctx.inner.weight(bi), ctx.outer.weight(oi)
        dg, dhv, djv = (_saga(s, k, val, b, wb) for k, val in (("g", g), ("hv", hv), ("jv", jv)))
        dfy, dfx = (_saga(s, k, val, ob, wo) for k, val in (("fy", fy), ("fx", fx)))
        s.update(x=x - outer_lr * (dfx - djv), y=y - inner_lr * dg, v=v - inner_lr * (dhv - dfy))
        return s

    return Solver(init, step)
