"""JAX-jit references of RHG and CG on the linear data hyper-cleaning problem (run in the JAX venv, not bilevel's).

The problem is the one ``bilevel bench`` times (``make_hyperclean("linear", ...)``,
src/bilevel/app/tasks/hyperclean.py): x in R^n (per-sample weight logits), y = {"weight": (C, D), "bias": (C,)},
logits = X @ W.T + b,

* lower f(x, y) = 1/n sum_i sigmoid(x_i) CE(logits_i, label_i) + l2 ||W||^2,
* upper F(x, y) = 1/m sum_j CE(logits_j, label_j) on the validation set,
* K inner steps y_{k+1} = y_k - lr grad_y f(x, y_k) from y_0 = 0 (float32).

RHG = d/dx F(x, y_K(x)) through the K steps (``jax.grad`` of a ``lax.scan`` unroll). CG = y_K from the K steps
(no gradient through them), v from exactly ``cg_iters`` conjugate-gradient iterations on H v = grad_y F(x, y_K)
from v = 0 (H = d2f/dy2 at (x, y_K); Hessian-vector products by ``jax.linearize`` of grad_y f; an iteration with
non-positive curvature p.Hp stops the solve, as benchmarks/references.py ``cg`` does), hypergradient =
grad_x F - (d2f/dx dy) v (a VJP). Both are ``jax.jit``-compiled with the data as arguments (not constants).

Input: an .npz written by ``benchmarks/jax_refs/group.py`` (X_train, y_train, X_val, y_val, x0, lr, K, cg_iters,
l2). Output, on stdout: one JSON line with, per method, the median seconds of ``--repeats`` timed calls
(``block_until_ready``), all samples, the compile seconds (``jit(...).lower(...).compile()``), the first call's
seconds and the hypergradient (a list); XLA's two matmuls of an inner step timed alone (``matmul_pair``); plus versions (python, numpy, jax, jaxlib), the backend and XLA_FLAGS::

    benchmarks/stochastic/jax/.venv/bin/python benchmarks/jax_refs/hyperclean.py problem.npz --threads 1

``--threads N`` sets XLA_FLAGS before jax is imported (1: ``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1``, as benchmarks/stochastic/jax/compare.py does); flags already in XLA_FLAGS are kept.
``--x64`` computes in float64 (a check of the formulas against the library's float64 hypergradient, not a timing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def thread_flags(threads: int) -> str:
    """XLA flags for ``threads``: one thread needs them; more use XLA's default pool (all cores; a bare
    ``intra_op_parallelism_threads=N`` is read by XLA as a flag file and aborts)."""
    if threads == 1:
        return "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return ""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("npz", help="problem arrays written by benchmarks/jax_refs/group.py")
    ap.add_argument("--methods", default="rhg,cg", help="comma-separated, of rhg and cg")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per method")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per method after compilation")
    ap.add_argument("--threads", type=int, default=None, help="XLA CPU threads (default: XLA's own choice)")
    ap.add_argument("--K", type=int, default=None, help="inner steps (default: the K of the .npz)")
    ap.add_argument("--no-grad", action="store_true", help="leave the hypergradients out of the JSON")
    ap.add_argument("--x64", action="store_true", help="compute in float64 (jax_enable_x64): checks the formulas "
                                                       "against the library's float64 result, not for timing")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads is not None:  # before jax is imported: XLA reads its flags once
        if args.threads < 1:
            raise SystemExit("--threads must be >= 1")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + thread_flags(args.threads)).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jaxlib
    import numpy as np

    fdt = jnp.float64 if args.x64 else jnp.float32
    data = np.load(args.npz)
    X_tr = jnp.asarray(data["X_train"], dtype=fdt)
    y_tr = jnp.asarray(data["y_train"], dtype=jnp.int32)
    X_val = jnp.asarray(data["X_val"], dtype=fdt)
    y_val = jnp.asarray(data["y_val"], dtype=jnp.int32)
    x0 = jnp.asarray(data["x0"], dtype=fdt)
    lr = float(data["lr"])
    K = int(data["K"]) if args.K is None else args.K
    cg_iters = int(data["cg_iters"])
    l2 = float(data["l2"]) if "l2" in data.files else 0.0
    classes = int(data["classes"]) if "classes" in data.files else int(max(int(y_tr.max()), int(y_val.max())) + 1)
    dim = X_tr.shape[1]
    y0 = {"weight": jnp.zeros((classes, dim), fdt), "bias": jnp.zeros((classes,), fdt)}
    batch = (X_tr, y_tr, X_val, y_val)

    def ce(logits, labels):  # per-sample cross-entropy
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]

    def lower(x, y, X, labels):
        loss = jnp.mean(jax.nn.sigmoid(x) * ce(X @ y["weight"].T + y["bias"], labels))
        if l2:
            loss = loss + l2 * jnp.sum(y["weight"] ** 2)
        return loss

    def upper(x, y, X, labels):
        return jnp.mean(ce(X @ y["weight"].T + y["bias"], labels))

    grad_y_lower = jax.grad(lower, argnums=1)
    tmap = jax.tree_util.tree_map

    def inner(x, y, X, labels):
        def step(yk, _):
            g = grad_y_lower(x, yk, X, labels)
            return tmap(lambda a, b: a - lr * b, yk, g), None

        return jax.lax.scan(step, y, None, length=K)[0]

    def rhg(x, y, data):
        Xt, lt, Xv, lv = data
        return jax.grad(lambda xx: upper(xx, inner(xx, y, Xt, lt), Xv, lv))(x)

    def vdot(a, b):
        return sum(jnp.vdot(u, w) for u, w in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    def cg(x, y, data):
        Xt, lt, Xv, lv = data
        yK = jax.lax.stop_gradient(inner(x, y, Xt, lt))
        gFx, b = jax.grad(upper, argnums=(0, 1))(x, yK, Xv, lv)
        _, hvp = jax.linearize(lambda yy: grad_y_lower(x, yy, Xt, lt), yK)  # H v, the primal done once

        def body(_, state):
            v, r, p, rs, stopped = state
            hp = hvp(p)
            curv = vdot(p, hp)
            go = jnp.logical_and(jnp.logical_not(stopped), curv > 0)
            a = jnp.where(go, rs / jnp.where(go, curv, 1.0), 0.0)
            v = tmap(lambda vi, pi: vi + a * pi, v, p)
            r_new = tmap(lambda ri, hi: ri - a * hi, r, hp)
            rs_new = vdot(r_new, r_new)
            beta = jnp.where(go, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
            p_new = tmap(lambda ri, pi: jnp.where(go, ri + beta * pi, pi), r_new, p)
            return v, r_new, p_new, jnp.where(go, rs_new, rs), jnp.logical_or(stopped, jnp.logical_not(go))

        zeros = tmap(jnp.zeros_like, b)
        v = jax.lax.fori_loop(0, cg_iters, body, (zeros, b, b, vdot(b, b), jnp.asarray(False)))[0]
        _, cross_vjp = jax.vjp(lambda xx: grad_y_lower(xx, yK, Xt, lt), x)
        return gFx - cross_vjp(v)[0]

    fns = {"rhg": rhg, "cg": cg}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in fns:
            raise SystemExit(f"unknown method {m!r}; use rhg and/or cg")

    out = {"problem": "hyperclean-linear", "K": K, "lr": lr, "cg_iters": cg_iters, "l2": l2,
           "n_train": int(X_tr.shape[0]), "n_val": int(X_val.shape[0]), "dim": int(dim), "classes": classes,
           "dtype": "float64" if args.x64 else "float32", "repeats": args.repeats, "warmup": args.warmup,
           "threads": args.threads, "methods": {},
           "versions": {"python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__,
                        "jaxlib": jaxlib.__version__},
           "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    for m in methods:
        t0 = time.perf_counter()
        compiled = jax.jit(fns[m]).lower(x0, y0, batch).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        g = compiled(x0, y0, batch).block_until_ready()
        first_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            compiled(x0, y0, batch).block_until_ready()
        samples = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            g = compiled(x0, y0, batch).block_until_ready()
            samples.append(time.perf_counter() - t0)
        rec = {"median_s": statistics.median(samples) if samples else None, "samples_s": samples,
               "compile_s": compile_s, "first_call_s": first_s, "finite": bool(np.isfinite(np.asarray(g)).all())}
        if not args.no_grad:
            rec["hypergrad"] = np.asarray(g, dtype=np.float64).tolist()
        out["methods"][m] = rec
    out["matmul_pair"] = time_pair(jax, jnp, X_tr, classes, args.repeats)
    sys.stdout.write(json.dumps(out) + "\n")


def time_pair(jax, jnp, X, classes: int, repeats: int) -> dict:
    """XLA's two products of an inner step on the training features (the logits X @ W' and the weight gradient
    G' @ X, W (C, D) and G (n, C) random), each jit-compiled alone: the median seconds of ``max(repeats, 20)``
    calls of each, and their sum (``pair_s``), to set beside the floor that ``bilevel bench`` measures with torch."""
    W = jax.random.normal(jax.random.PRNGKey(0), (classes, X.shape[1]), X.dtype)
    G = jax.random.normal(jax.random.PRNGKey(1), (X.shape[0], classes), X.dtype)
    fns = {"X @ W.T": (jax.jit(lambda X, W: X @ W.T), W), "G.T @ X": (jax.jit(lambda X, G: G.T @ X), G)}
    med = {}
    for name, (f, a) in fns.items():
        f(X, a).block_until_ready()
        samples = []
        for _ in range(max(repeats, 20)):
            t0 = time.perf_counter()
            f(X, a).block_until_ready()
            samples.append(time.perf_counter() - t0)
        med[name] = statistics.median(samples)
    return {"seconds": med, "pair_s": sum(med.values())}


if __name__ == "__main__":
    main()
