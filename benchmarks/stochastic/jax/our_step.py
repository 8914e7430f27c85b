"""Time per outer step of ``bilevel.stochastic`` (SOBA, SABA, AmIGO) on the two timing problems, in torch float32.

Runs in the main venv; the counterpart of their_step.py (same data, from problem_data.py, same sizes and the
benchmark's default parameters): inner_lr 0.1 (their step_size), outer_lr 0.1 (step_size / outer_ratio), batch 64,
n_inner_steps 10 for AmIGO. The objectives are ``upper(x, y, idx)`` / ``lower(x, y, idx)``, means over the index
tensor ``idx`` (our sampler's fixed batches are random sample indices, so the data rows are gathered; theirs are
contiguous slices; ``--batches contiguous`` makes ours ranges of consecutive samples too, and ``--rows slice`` then
reads them as a slice, a view, instead of gathering them).

For each method: build a ``StochasticLoop``, run ``--warmup`` untimed blocks of ``--steps`` steps, then
``--repeats`` timed blocks: time per step = block time / steps; the median is reported, with the process CPU time
over wall time of the timed blocks (about 1 with one thread).

    benchmarks/stochastic/jax/... main venv: .venv/bin/python benchmarks/stochastic/jax/our_step.py --problem quadratic

Prints one JSON object (the last line of stdout).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bilevel  # noqa: E402
from bilevel.stochastic import StochasticLoop  # noqa: E402

import problem_data  # noqa: E402

# Their defaults (step_size 0.1, outer_ratio 1, batch_size 64; AmIGO n_inner_steps 10).
STEP_SIZE, OUTER_RATIO, BATCH = 0.1, 1.0, problem_data.BATCH
OPTIONS = {"soba": {}, "saba": {}, "amigo": {"n_inner_steps": 10}}


def _rows(t, idx):
    """The rows ``idx`` of ``t``, gathered (a copy)."""
    return t if idx is None else t.index_select(0, idx)


def _slice_rows(t, idx):
    """The rows ``idx`` of ``t`` as a slice (a view, no copy), like their ``lax.dynamic_slice``: ``idx`` must be a
    range of consecutive samples (``--batches contiguous``; a batch's indices are sorted and distinct, so its first
    and last index tell)."""
    if idx is None:
        return t
    start, n = int(idx[0]), idx.numel()
    if int(idx[-1]) - start + 1 != n:
        raise ValueError("--rows slice needs batches of consecutive samples (--batches contiguous)")
    return t.narrow(0, start, n)


ROWS = {"gather": _rows, "slice": _slice_rows}


def quadratic_problem(rows=_rows):
    data = problem_data.quadratic()
    p = problem_data.QUADRATIC

    def make(d):
        A, B, C, a, b = (torch.from_numpy(d[k]) for k in "ABCab")

        def f(x, y, idx):  # mean over idx of 1/2 y'A_i y + 1/2 x'B_i x + x'C_i y + a_i'y + b_i'x
            Ab, Bb, Cb, ab, bb = (rows(t, idx) for t in (A, B, C, a, b))
            per_sample = (0.5 * ((Ab @ y) * y).sum(1) + 0.5 * ((Bb @ x) * x).sum(1) + ((Cb @ y) * x).sum(1)
                          + ab @ y + bb @ x)
            return per_sample.mean()

        return f

    return dict(upper=make(data["outer"]), lower=make(data["inner"]), n_upper=p["n_outer"], n_lower=p["n_inner"],
                x0=-2 * torch.ones(p["dim_outer"]), y0=torch.zeros(p["dim_inner"]))


def quadratic_mean_problem(rows=_rows):
    """The dense quadratic, its batch mean taken over the matrices first (:func:`problem_data.dense_mean`)."""
    data, p = problem_data.quadratic(), problem_data.QUADRATIC

    def make(d):
        arrays = [torch.from_numpy(d[k]) for k in "ABCab"]

        def f(x, y, idx):
            n = arrays[0].shape[0] if idx is None else idx.numel()
            return problem_data.dense_mean(*(rows(t, idx) for t in arrays), x, y, torch.full((n,), 1.0 / n))

        return f

    return dict(upper=make(data["outer"]), lower=make(data["inner"]), n_upper=p["n_outer"], n_lower=p["n_inner"],
                x0=-2 * torch.ones(p["dim_outer"]), y0=torch.zeros(p["dim_inner"]))


def _factored_problem(blocks):
    """The factored quadratic whose objectives read a batch's six factor blocks as ``blocks(side)(idx)``."""
    p = problem_data.QUADRATIC

    def make(side):
        rows_of = blocks(side)
        return lambda x, y, idx: problem_data.factored_mean(*rows_of(idx), x, y)

    return dict(upper=make("outer"), lower=make("inner"), n_upper=p["n_outer"], n_lower=p["n_inner"],
                x0=-2 * torch.ones(p["dim_outer"]), y0=torch.zeros(p["dim_inner"]))


def quadratic_factored_problem(rows=_rows):
    data = problem_data.quadratic(dense=False)

    def blocks(side):  # one gather per factor array
        arrays = [torch.from_numpy(data[side][k]) for k in problem_data.STACKED]
        return lambda idx: [rows(t, idx) for t in arrays]

    return _factored_problem(blocks)


def quadratic_stacked_problem(rows=_rows):
    data, d = problem_data.quadratic_stacked(), problem_data.QUADRATIC["dim_inner"]

    def blocks(side):  # one gather of the batch's rows, cut into the six factor blocks
        table = torch.from_numpy(data[side])
        return lambda idx: rows(table, idx).split(d, dim=1)

    return _factored_problem(blocks)


def datacleaning_problem(problem="datacleaning", rows=_rows):
    data = problem_data.datacleaning(problem=problem)
    p = problem_data.datacleaning_sizes(problem)
    nf, nc, reg = p["n_features"], p["n_classes"], p["reg"]
    Xtr, Xval = torch.from_numpy(data["X_train"]), torch.from_numpy(data["X_val"])
    ytr, yval = torch.from_numpy(data["y_train"]).long(), torch.from_numpy(data["y_val"]).long()

    def logits(A, y):  # the linear model, theta = y.view(nc, nf): (theta A')' is 2-5x faster than A theta' on MKL
        return (y.view(nc, nf) @ A.T).T

    def lower(x, y, idx):  # sigmoid(x_i)-weighted cross-entropy of the linear model + reg ||theta||^2
        logits_ = logits(rows(Xtr, idx), y)
        w = torch.sigmoid(rows(x, idx))
        return (w * F.cross_entropy(logits_, rows(ytr, idx), reduction="none")).mean() + reg * (y * y).sum()

    def upper(x, y, idx):  # validation cross-entropy (independent of x)
        return F.cross_entropy(logits(rows(Xval, idx), y), rows(yval, idx))

    return dict(upper=upper, lower=lower, n_upper=p["n_outer"], n_lower=p["n_inner"],
                x0=-2 * torch.ones(p["n_inner"]), y0=torch.zeros(nf * nc))


PROBLEMS = {"quadratic": quadratic_problem, "quadratic_mean": quadratic_mean_problem,
            "quadratic_factored": quadratic_factored_problem,
            "quadratic_stacked": quadratic_stacked_problem, "datacleaning": datacleaning_problem,
            "datacleaning64": functools.partial(datacleaning_problem, problem="datacleaning64")}


def time_method(method, prob, steps, warmup, repeats, saba_memory_mb, compile_block=0, batches="shuffled"):
    options = dict(OPTIONS[method])
    if compile_block:
        options["compile_block"] = compile_block
    if method == "saba":
        options["max_memory_mb"] = saba_memory_mb  # per-sample memories: 3.4 GB on datacleaning
    t0 = time.perf_counter()
    loop = StochasticLoop(prob["upper"], prob["lower"], prob["x0"], prob["y0"], method=method,
                          n_upper=prob["n_upper"], n_lower=prob["n_lower"], batch_size=BATCH, seed=1,
                          inner_lr=STEP_SIZE, outer_lr=STEP_SIZE / OUTER_RATIO, batches=batches, **options)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop.run(warmup * steps)  # with compile_block: the compilation happens here
    warmup_s = time.perf_counter() - t0
    per_step, cpu, wall = [], 0.0, 0.0
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        loop.run(steps)
        t1, c1 = time.perf_counter(), time.process_time()
        per_step.append((t1 - t0) / steps)
        cpu, wall = cpu + c1 - c0, wall + t1 - t0
    finite = bool(torch.isfinite(loop.state["x"]).all() and torch.isfinite(loop.state["y"]).all())
    return {"us_per_step": 1e6 * statistics.median(per_step), "samples_us": [1e6 * s for s in per_step],
            "steps_per_sample": steps, "cpu_over_wall": cpu / wall, "setup_s": setup_s, "steps_run": loop.t,
            "finite": finite, "compile_block": compile_block, "compile_s": loop.compile_seconds,
            "warmup_s": warmup_s, "params": {"inner_lr": STEP_SIZE, "outer_lr": STEP_SIZE / OUTER_RATIO,
                                         "batch_size": BATCH, "batches": batches, **options}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", choices=sorted(PROBLEMS), required=True)
    ap.add_argument("--methods", default="soba,saba,amigo")
    ap.add_argument("--steps", type=int, default=128, help="steps per timed block (their eval_freq)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed blocks")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--saba-memory-mb", type=float, default=8192.0)
    ap.add_argument("--compile-block", type=int, default=0,
                    help="run the steps in torch.compile-d blocks of this many (0: eager; must divide --steps); "
                         "AmIGO, whose iteration makes 21 oracle calls, uses a sixteenth of it (its graph is that much "
                         "larger per iteration)")
    ap.add_argument("--batches", choices=("shuffled", "contiguous"), default="shuffled",
                    help="the loop's fixed batches: pieces of a seeded permutation, or ranges of consecutive samples "
                         "(benchmark_bilevel's contiguous slices)")
    ap.add_argument("--rows", choices=sorted(ROWS), default="gather",
                    help="how the objectives read a batch's rows: gathered by index (a copy), or, with --batches "
                         "contiguous, eager only, as a slice (a view, like their lax.dynamic_slice)")
    args = ap.parse_args()
    if args.rows == "slice" and (args.batches != "contiguous" or args.compile_block):
        ap.error("--rows slice needs --batches contiguous and the eager engine (--compile-block 0)")
    torch.set_num_threads(args.threads)
    prob = PROBLEMS[args.problem](rows=ROWS[args.rows])
    out = {"side": "ours", "problem": args.problem, "methods": {},
           "versions": {"bilevel": getattr(bilevel, "__version__", "?"), "torch": torch.__version__,
                        "numpy": np.__version__, "python": sys.version.split()[0]},
           "threads": torch.get_num_threads(), "dtype": str(prob["y0"].dtype), "rows": args.rows}
    for m in args.methods.split(","):
        block = max(1, args.compile_block // 16) if (args.compile_block and m == "amigo") else args.compile_block
        out["methods"][m] = time_method(m, prob, args.steps, args.warmup, args.repeats, args.saba_memory_mb, block,
                                        args.batches)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
