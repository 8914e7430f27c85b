"""Minimal hand-written torch/autograd reference implementations of the library's methods.

These are what `bilevel bench` compares the library against (``ratio_to_reference``). Each is one short
function, written the way one would write the method by hand in a script: plain ``torch.autograd.grad`` and
``torch.func``, no flattening, no checks, no diagnostics. They compute the same quantity as the library method
(tests/benchmarks/test_bench_references.py checks this to 1e-8 in float64), so a ratio above 1 is library overhead.

Conventions: ``upper(x, y)`` / ``lower(x, y)`` are the task's objectives; ``x`` and ``y`` are tensors or dicts of
tensors (handled by :func:`_leaves` / :func:`_tree`). Every function returns the hypergradient with the
structure of ``x`` (and, for IAPTT-GM, the gradient w.r.t. ``y0`` as well). An objective that exposes
``features(x)`` and ``head(h, y)`` (``bilevel.Factored``, e.g. the few-shot objectives) has its x-only part
computed once per x, as one would write the loop by hand (:func:`_of_y`).
"""
from __future__ import annotations

import torch


# ------------------------------------------------------------------------------------------ helpers
def _leaves(t):
    """``(names, [tensors])``: names is None for a plain tensor."""
    if isinstance(t, dict):
        return list(t), list(t.values())
    return None, [t]


def _tree(names, leaves):
    return leaves[0] if names is None else dict(zip(names, leaves))


def _of_y(fn, X):
    """``y -> fn(X, y)`` at a fixed ``X``; a factored objective's ``features(X)`` is computed here, once."""
    features, head = getattr(fn, "features", None), getattr(fn, "head", None)
    if callable(features) and callable(head):
        h = features(X)
        return lambda Y: head(h, Y)
    return lambda Y: fn(X, Y)


def _leaf_x(x):
    xn, xs = _leaves(x)
    xs = [t.detach().requires_grad_() for t in xs]
    return xn, xs, _tree(xn, xs)


def _gd_steps(lower, X, yn, ys, K, lr, create_graph):
    """K gradient steps on lower, differentiable (``create_graph=True``) or graph-free."""
    f = _of_y(lower, X)
    for _ in range(K):
        if not create_graph or not ys[0].requires_grad:
            ys = [y.detach().requires_grad_() for y in ys]
        gs = torch.autograd.grad(f(_tree(yn, ys)), ys, create_graph=create_graph)
        if create_graph:
            ys = [y - lr * g for y, g in zip(ys, gs)]
        else:
            with torch.no_grad():
                ys = [y - lr * g for y, g in zip(ys, gs)]
    return ys


def _grad_x(upper, X, xn, xs, yn, ys):
    gx = torch.autograd.grad(upper(X, _tree(yn, ys)), xs, allow_unused=True)
    return _tree(xn, [torch.zeros_like(x) if g is None else g for g, x in zip(gx, xs)])


# ------------------------------------------------------------------------------------------ baseline
def inner_loop(lower, x, y0, K, lr):
    """The plain inner loop: K gradient steps on the lower objective, no graph kept. Returns y_K."""
    yn, ys = _leaves(y0)
    X = _tree(*_leaves(x))
    with torch.enable_grad():
        ys = _gd_steps(lower, X, yn, ys, K, lr, create_graph=False)
    return _tree(yn, ys)


# ------------------------------------------------------------------------------------------ methods
def rhg(upper, lower, x, y0, K, lr):
    """RHG: unroll K steps with ``create_graph=True`` and back-propagate F(x, y_K)."""
    xn, xs, X = _leaf_x(x)
    yn, ys = _leaves(y0)
    ys = _gd_steps(lower, X, yn, ys, K, lr, create_graph=True)
    return _grad_x(upper, X, xn, xs, yn, ys)


def trhg(upper, lower, x, y0, K, lr, T):
    """T-RHG: K - T steps without a graph, then an RHG unroll of the last T steps."""
    xn, xs, X = _leaf_x(x)
    yn, ys = _leaves(y0)
    ys = _gd_steps(lower, X, yn, ys, K - T, lr, create_graph=False)
    ys = _gd_steps(lower, X, yn, ys, T, lr, create_graph=True)
    return _grad_x(upper, X, xn, xs, yn, ys)


def _implicit(upper, lower, x, y0, K, lr, solve):
    """y_K by the plain loop, then grad_x F - (d2f/dxdy) v with (d2f/dy2) v = grad_y F (HVPs: double backward)."""
    xn, xs, X = _leaf_x(x)
    yn, ys = _leaves(y0)
    ys = [y.requires_grad_() for y in _gd_steps(lower, X, yn, ys, K, lr, create_graph=False)]
    gF = torch.autograd.grad(upper(X, _tree(yn, ys)), xs + ys, allow_unused=True)
    gFx, b = gF[:len(xs)], [torch.zeros_like(y) if g is None else g for g, y in zip(gF[len(xs):], ys)]
    gf = torch.autograd.grad(lower(X, _tree(yn, ys)), ys, create_graph=True)

    def hvp(v):
        return torch.autograd.grad(gf, ys, grad_outputs=v, retain_graph=True)

    v = solve(hvp, b)
    cross = torch.autograd.grad(gf, xs, grad_outputs=v, allow_unused=True)
    return _tree(xn, [(torch.zeros_like(x) if a is None else a) - (0 if c is None else c)
                      for a, c, x in zip(gFx, cross, xs)])


def _dot(a, b):
    return sum((u * w).sum() for u, w in zip(a, b))


def cg(upper, lower, x, y0, K, lr, iters=10):
    """Implicit differentiation with ``iters`` conjugate-gradient iterations (stops on non-positive curvature)."""

    def solve(hvp, b):
        v = [torch.zeros_like(t) for t in b]
        r = [t.clone() for t in b]
        p = [t.clone() for t in b]
        rs = _dot(r, r)
        for _ in range(iters):
            hp = hvp(p)
            curv = _dot(p, hp)
            if float(curv) <= 0.0:
                break
            a = rs / curv
            v = [vi + a * pi for vi, pi in zip(v, p)]
            r = [ri - a * hi for ri, hi in zip(r, hp)]
            rs_new = _dot(r, r)
            p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
            rs = rs_new
        return v

    return _implicit(upper, lower, x, y0, K, lr, solve)


def neumann(upper, lower, x, y0, K, lr, terms=20, eta=None):
    """Implicit differentiation with the truncated Neumann series eta * sum_{j<J} (I - eta H)^j b."""
    eta = lr if eta is None else eta

    def solve(hvp, b):
        p, acc = list(b), [t.clone() for t in b]
        for _ in range(terms - 1):
            p = [pi - eta * hi for pi, hi in zip(p, hvp(p))]
            acc = [a + pi for a, pi in zip(acc, p)]
        return [eta * a for a in acc]

    return _implicit(upper, lower, x, y0, K, lr, solve)


def bda(upper, lower, x, y0, K, lr, upper_lr=None, alpha=lambda j: 0.5 / j):
    """BDA (Eq. 10): y <- y - grad_y(a_j s_u F + (1 - a_j) s_l f), unrolled with a graph."""
    su = lr if upper_lr is None else upper_lr
    xn, xs, X = _leaf_x(x)
    yn, ys = _leaves(y0)
    ys = [y.detach().requires_grad_() for y in ys]
    F, f = _of_y(upper, X), _of_y(lower, X)
    for j in range(1, K + 1):
        a = alpha(j)
        Y = _tree(yn, ys)
        gs = torch.autograd.grad(a * su * F(Y) + (1 - a) * lr * f(Y), ys, create_graph=True)
        ys = [y - g for y, g in zip(ys, gs)]
    return _grad_x(upper, X, xn, xs, yn, ys)


def iaptt(upper, lower, x, y0, K, lr):
    """IAPTT-GM (Alg. 1) as usually written: one taped unroll from z = y0, F(x, y_k) recorded at every step,
    back-propagate F(x, y_kbar) at the first maximizer k_bar. Returns ``(grad_x, grad_y0, k_bar)``."""
    xn, xs, X = _leaf_x(x)
    yn, z = _leaves(y0)
    z = [t.detach().requires_grad_() for t in z]
    ys, best, best_ys, k_bar = z, None, None, 0
    f = _of_y(lower, X)
    with torch.no_grad():
        F_const = _of_y(upper, X)
    for k in range(1, K + 1):
        gs = torch.autograd.grad(f(_tree(yn, ys)), ys, create_graph=True)
        ys = [y - lr * g for y, g in zip(ys, gs)]
        with torch.no_grad():
            val = float(F_const(_tree(yn, [y.detach() for y in ys])))
        if best is None or val > best:
            best, best_ys, k_bar = val, ys, k
    g = torch.autograd.grad(upper(X, _tree(yn, best_ys)), xs + z, allow_unused=True)
    g = [torch.zeros_like(t) if gi is None else gi for gi, t in zip(g, xs + z)]
    return _tree(xn, g[:len(xs)]), _tree(yn, g[len(xs):]), k_bar


def fhg_scalar(upper, lower, x, y0, K, lr):
    """FHG for a tensor x (one entry: a scalar hyperparameter): forward-mode tangent Z = dy/dx pushed with
    ``torch.func.jvp`` through each step; d phi/dx = grad_x F + <grad_y F, Z_K>. Memory independent of K."""
    grad_y = torch.func.grad(lower, argnums=1)
    yn, ys = _leaves(y0)

    def step(xv, *yv):
        g = grad_y(xv, _tree(yn, list(yv)))
        return tuple(y - lr * gi for y, gi in zip(yv, _leaves(g)[1]))

    x = x.detach()
    ys = tuple(y.detach() for y in ys)
    zs = tuple(torch.zeros_like(y) for y in ys)
    one = torch.ones_like(x)
    for _ in range(K):
        ys, zs = torch.func.jvp(step, (x,) + ys, (one,) + zs)
    gFx, gFy = torch.func.grad(upper, argnums=(0, 1))(x, _tree(yn, list(ys)))
    return gFx + _dot(_leaves(gFy)[1], zs)


# ------------------------------------------------------------------------------------------ few-shot
def fewshot_rhg_per_task(backbone, task_loss, x, heads0, sx, sy, qx, qy, K, lr):
    """Few-shot RHG with a per-task Python loop (no vmap, one task at a time).

    Task j: its support features ``backbone(x, S_j)`` once (with the graph to x), K steps on its head with lower
    ``CE(head_j, feats_j)``, then ``CE(head_j, backbone(x, Q_j)) / B`` back-propagated; the gradients w.r.t. the
    backbone ``x`` (dict) are summed over tasks. Same result as RHG on the vmapped objective, and the same
    work per task as the library does for the whole batch (features once per x): what differs is one batched
    call against B per-task calls.
    """
    B = heads0.shape[0]
    names = list(x)
    total = [torch.zeros_like(x[k]) for k in names]
    for j in range(B):
        xs = [x[k].detach().requires_grad_() for k in names]
        X = dict(zip(names, xs))
        h = heads0[j].detach().requires_grad_()
        feats = backbone(X, sx[j:j + 1])[0]
        for _ in range(K):
            (g,) = torch.autograd.grad(task_loss(h, feats, sy[j]), h, create_graph=True)
            h = h - lr * g
        gs = torch.autograd.grad(task_loss(h, backbone(X, qx[j:j + 1])[0], qy[j]) / B, xs)
        total = [a + b for a, b in zip(total, gs)]
    return dict(zip(names, total))
