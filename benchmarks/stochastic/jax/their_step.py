"""Time per outer step of benchopt benchmark_bilevel's JAX solvers (SOBA, SABA, AmIGO) on the two timing problems.

Runs in the JAX venv (benchmarks/stochastic/jax/.venv, made by setup.sh) and imports THEIR solver classes, at run
time, from the git-ignored export benchmarks/stochastic/jax/benchmark_bilevel (nothing of theirs is copied here).
Only the problem glue is written here: ``f(inner_var, outer_var, start, batch_size)``, the mean over the samples
``start .. start + batch_size - 1`` cut with ``lax.dynamic_slice``, the signature their ``set_objective`` expects
(see problem_data.py for the data).

For each solver: ``Solver.get_instance()`` (their default parameters: step_size 0.1, outer_ratio 1, batch_size 64,
n_inner_steps 10 for AmIGO, eval_freq 128, random_state 1), then their ``set_objective(f_inner, f_outer,
n_inner_samples, n_outer_samples, inner_var0, outer_var0)`` (which jits their ``one_epoch`` -- a ``lax.scan``
over eval_freq outer steps -- and warms it up with ``run_once(2)``), ``init()``, ``--warmup`` more epochs, then
``--repeats`` timed epochs continuing the same run: time per step = epoch time / eval_freq (each epoch blocks until
its result is ready); the median is reported. The process CPU time over wall time of the timed epochs is reported
too (about 1 when XLA runs on one thread).

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        benchmarks/stochastic/jax/.venv/bin/python benchmarks/stochastic/jax/their_step.py --problem quadratic

Prints one JSON object (the last line of stdout).
"""
from __future__ import annotations

import argparse
import functools
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = os.path.join(HERE, "benchmark_bilevel")
sys.path.insert(0, HERE)
sys.path.insert(0, TREE)

import numpy as np  # noqa: E402

import problem_data  # noqa: E402

SOLVERS = {"soba": "soba.py", "saba": "saba.py", "amigo": "amigo.py"}


def load_solver(method):
    """Their ``Solver`` class from solvers/<method>.py (their modules print to stdout: sent to stderr)."""
    path = os.path.join(TREE, "solvers", SOLVERS[method])
    spec = importlib.util.spec_from_file_location(f"benchmark_bilevel_solver_{method}", path)
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(sys.stderr):
        spec.loader.exec_module(module)
    return module.Solver


# ------------------------------------------------------------------------------------- the problems, as JAX functions
def quadratic_problem(jax, jnp):
    data = problem_data.quadratic()
    lax = jax.lax

    def make(t):
        A, B, C, a, b = (jnp.asarray(t[k]) for k in "ABCab")

        def f(inner_var, outer_var, start=0, batch_size=1):
            sl = lambda arr: lax.dynamic_slice_in_dim(arr, start, batch_size, axis=0)  # noqa: E731
            Ab, Bb, Cb, ab, bb = sl(A), sl(B), sl(C), sl(a), sl(b)
            per_sample = (0.5 * jnp.einsum("nij,i,j->n", Ab, inner_var, inner_var)
                          + 0.5 * jnp.einsum("nij,i,j->n", Bb, outer_var, outer_var)
                          + jnp.einsum("nij,i,j->n", Cb, outer_var, inner_var)
                          + ab @ inner_var + bb @ outer_var)
            return per_sample.mean()

        return jax.jit(f, static_argnames=("batch_size",))

    return _quadratic_objective(jnp, make, data)


def quadratic_mean_problem(jax, jnp):
    """The dense quadratic, its batch mean taken over the matrices first (problem_data.dense_mean)."""
    data = problem_data.quadratic()

    def make(t):
        arrays = [jnp.asarray(t[k]) for k in "ABCab"]

        def f(inner_var, outer_var, start=0, batch_size=1):
            rows = [jax.lax.dynamic_slice_in_dim(arr, start, batch_size, axis=0) for arr in arrays]
            return problem_data.dense_mean(*rows, outer_var, inner_var, jnp.full((batch_size,), 1.0 / batch_size))

        return jax.jit(f, static_argnames=("batch_size",))

    return _quadratic_objective(jnp, make, data)


def _quadratic_objective(jnp, make, data):
    """The set_objective arguments of a quadratic whose per-sample functions ``make`` builds from ``data``."""
    p = problem_data.QUADRATIC
    return dict(f_inner=make(data["inner"]), f_outer=make(data["outer"]), n_inner_samples=p["n_inner"],
                n_outer_samples=p["n_outer"], inner_var0=jnp.zeros(p["dim_inner"], jnp.float32),
                outer_var0=-2 * jnp.ones(p["dim_outer"], jnp.float32))


def _factored_objective(jax, jnp, data, cut):
    """The factored quadratic on ``data`` (``{"inner": ..., "outer": ...}``), whose functions read a batch's six
    factor blocks as ``cut(table, start, batch_size)`` from each side's ``table = jnp.asarray``-ed data."""

    def make(t):
        table = jax.tree_util.tree_map(jnp.asarray, t)

        def f(inner_var, outer_var, start=0, batch_size=1):
            return problem_data.factored_mean(*cut(table, start, batch_size), outer_var, inner_var)

        return jax.jit(f, static_argnames=("batch_size",))

    return _quadratic_objective(jnp, make, data)


def quadratic_factored_problem(jax, jnp):
    def cut(arrays, start, batch_size):  # one slice per factor array
        return [jax.lax.dynamic_slice_in_dim(arrays[k], start, batch_size, axis=0) for k in problem_data.STACKED]

    return _factored_objective(jax, jnp, problem_data.quadratic(dense=False), cut)


def quadratic_stacked_problem(jax, jnp):
    d = problem_data.QUADRATIC["dim_inner"]

    def cut(table, start, batch_size):  # one slice of the batch's rows, cut into the six factor blocks
        rows = jax.lax.dynamic_slice_in_dim(table, start, batch_size, axis=0)
        return [rows[:, k * d:(k + 1) * d] for k in range(len(problem_data.STACKED))]

    return _factored_objective(jax, jnp, problem_data.quadratic_stacked(), cut)


def datacleaning_problem(jax, jnp, problem="datacleaning"):
    data = problem_data.datacleaning(problem=problem)
    p = problem_data.datacleaning_sizes(problem)
    lax = jax.lax
    nf, nc, reg = p["n_features"], p["n_classes"], p["reg"]
    Xtr, Xval = jnp.asarray(data["X_train"]), jnp.asarray(data["X_val"])
    Ytr = jax.nn.one_hot(data["y_train"], nc, dtype=jnp.float32)
    Yval = jax.nn.one_hot(data["y_val"], nc, dtype=jnp.float32)

    def ce(theta_flat, X, Y):  # per-sample cross-entropy of the linear model (theta: classes x features), one-hot Y
        logits = (theta_flat.reshape(nc, nf) @ X.T).T  # 1.4-2x faster per step than X @ theta' here, as in torch
        return jax.nn.logsumexp(logits, axis=1) - (logits * Y).sum(axis=1)

    def f_inner(inner_var, outer_var, start=0, batch_size=1):
        X = lax.dynamic_slice_in_dim(Xtr, start, batch_size, axis=0)
        Y = lax.dynamic_slice_in_dim(Ytr, start, batch_size, axis=0)
        w = jax.nn.sigmoid(lax.dynamic_slice_in_dim(outer_var, start, batch_size, axis=0))
        return (w * ce(inner_var, X, Y)).mean() + reg * jnp.sum(inner_var ** 2)

    def f_outer(inner_var, outer_var, start=0, batch_size=1):
        X = lax.dynamic_slice_in_dim(Xval, start, batch_size, axis=0)
        Y = lax.dynamic_slice_in_dim(Yval, start, batch_size, axis=0)
        return ce(inner_var, X, Y).mean()

    return dict(f_inner=jax.jit(f_inner, static_argnames=("batch_size",)),
                f_outer=jax.jit(f_outer, static_argnames=("batch_size",)), n_inner_samples=p["n_inner"],
                n_outer_samples=p["n_outer"], inner_var0=jnp.zeros(nf * nc, jnp.float32),
                outer_var0=-2 * jnp.ones(p["n_inner"], jnp.float32))


PROBLEMS = {"quadratic": quadratic_problem, "quadratic_mean": quadratic_mean_problem,
            "quadratic_factored": quadratic_factored_problem,
            "quadratic_stacked": quadratic_stacked_problem, "datacleaning": datacleaning_problem,
            "datacleaning64": functools.partial(datacleaning_problem, problem="datacleaning64")}


# ----------------------------------------------------------------------------------------------------------- timing
def time_solver(jax, method, objective, warmup, repeats):
    Solver = load_solver(method)
    solver = Solver.get_instance()  # their defaults
    params = {k: getattr(solver, k) for k in solver.parameters}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        solver.set_objective(**objective)  # jit + run_once(2)
    setup_s = time.perf_counter() - t0
    n = solver.eval_freq
    state = solver.init()
    if isinstance(state, tuple):  # SABA: init() -> (memory, carry); one_epoch(carry, memory, n) -> (memory, carry)
        def epoch(st):
            memory, carry = st
            return solver.one_epoch(carry, memory, n)
    else:
        def epoch(st):
            return solver.one_epoch(st, n)
    for _ in range(warmup):
        state = jax.block_until_ready(epoch(state))
    per_step, cpu, wall = [], 0.0, 0.0
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        state = jax.block_until_ready(epoch(state))
        t1, c1 = time.perf_counter(), time.process_time()
        per_step.append((t1 - t0) / n)
        cpu, wall = cpu + c1 - c0, wall + t1 - t0
    carry = state[1] if isinstance(state, tuple) else state
    finite = bool(np.isfinite(np.asarray(carry["inner_var"])).all()
                  and np.isfinite(np.asarray(carry["outer_var"])).all())
    return {"us_per_step": 1e6 * statistics.median(per_step), "samples_us": [1e6 * s for s in per_step],
            "steps_per_sample": n, "cpu_over_wall": cpu / wall, "setup_s": setup_s,
            "steps_run": n * (2 + warmup + repeats), "finite": finite, "params": params, "class": Solver.name}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", choices=sorted(PROBLEMS), required=True)
    ap.add_argument("--methods", default="soba,saba,amigo")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs after their run_once(2) warm-up")
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs (of eval_freq = 128 steps)")
    args = ap.parse_args()
    with contextlib.redirect_stdout(sys.stderr):
        import jax
        import jax.numpy as jnp
        import jaxlib
        import benchopt
    objective = PROBLEMS[args.problem](jax, jnp)
    out = {"side": "jax", "problem": args.problem, "methods": {},
           "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "benchopt": benchopt.__version__,
                        "numpy": np.__version__, "python": sys.version.split()[0]},
           "backend": jax.default_backend(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
           "x64": bool(jax.config.jax_enable_x64), "dtype": str(objective["inner_var0"].dtype)}
    for m in args.methods.split(","):
        out["methods"][m] = time_solver(jax, m, objective, args.warmup, args.repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
