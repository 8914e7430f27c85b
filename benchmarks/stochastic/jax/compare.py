"""Time per outer step, side by side: benchopt benchmark_bilevel's JAX solvers against ``bilevel.stochastic``.

Runs their_step.py (in the JAX venv made by setup.sh) and our_step.py (in this venv) as subprocesses, alternately,
``--rounds`` times (round r runs JAX first when r is even, ours first when odd), for each problem (quadratic,
datacleaning) and method (SOBA, SABA, AmIGO). Both sides get the same thread count (default 1: XLA_FLAGS
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` for JAX, ``torch.set_num_threads(1)`` for
ours, OMP/MKL/OpenBLAS threads 1 for both) and, with ``--cpu N``, the same CPU core. Each subprocess reports the
median time per step of ``--repeats`` timed blocks of 128 steps (their eval_freq), after warm-up (compilation for
JAX). The ratio ours/JAX is formed per round (paired: the two runs of a round are adjacent in time) and its median
over the rounds is reported, with the min and max.

Writes benchmarks/results/stochastic/jax_compare.json and jax_compare.md (table and machine information)::

    benchmarks/stochastic/jax/setup.sh          # once: the JAX venv and the export of benchmark_bilevel
    .venv/bin/python benchmarks/stochastic/jax/compare.py --rounds 5 --cpu 0
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
JAX_PY = os.path.join(HERE, ".venv", "bin", "python")
OUT_DIR = os.path.join(ROOT, "benchmarks", "results", "stochastic")
NAMES = {"soba": "SOBA", "saba": "SABA", "amigo": "AmIGO"}


def child_env(threads: int, extra: dict) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["JAX_PLATFORMS"] = "cpu"
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    else:
        env.pop("XLA_FLAGS", None)  # XLA's default pool (a bare intra_op_parallelism_threads=N aborts XLA)
    env.update(extra)
    return env


def compiled_methods(spec: str, problem: str) -> str:
    """The methods of ``--compiled-methods`` that apply to ``problem``: ``m`` (every problem) or ``problem:m``."""
    return ",".join(e.split(":")[-1] for e in spec.split(",") if ":" not in e or e.split(":")[0] == problem)


def run_side(side: str, problem: str, args) -> dict:
    if side == "jax":
        cmd = [args.jax_python, os.path.join(HERE, "their_step.py")]
        extra = {}
    else:
        cmd = [sys.executable, os.path.join(HERE, "our_step.py"), "--threads", str(args.threads),
               "--batches", args.batches]
        if side == "compiled":
            cmd += ["--compile-block", str(args.compile_block)]
        else:
            cmd += ["--rows", args.rows]
        extra = dict(kv.split("=", 1) for kv in args.our_env)
    methods = compiled_methods(args.compiled_methods, problem) if side == "compiled" else args.methods
    cmd += ["--problem", problem, "--methods", methods, "--repeats", str(args.repeats)]
    preexec = (lambda: os.sched_setaffinity(0, {args.cpu})) if args.cpu is not None else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(args.threads, extra), capture_output=True, text=True,
                          timeout=args.timeout, preexec_fn=preexec, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{side} {problem} failed (rc {proc.returncode}): {' '.join(cmd)}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def git_head(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def their_commit() -> str:
    try:
        with open(os.path.join(HERE, "benchmark_bilevel", ".commit")) as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def summarise(rounds: list, problems: list, methods: list) -> list:
    rows = []
    for p in problems:
        for m in methods:
            jax_us = [r[p]["jax"]["methods"][m]["us_per_step"] for r in rounds]
            our_us = [r[p]["ours"]["methods"][m]["us_per_step"] for r in rounds]
            ratios = [o / j for o, j in zip(our_us, jax_us)]
            rows.append({
                "problem": p, "method": m, "jax_us": statistics.median(jax_us), "ours_us": statistics.median(our_us),
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "jax_us_rounds": jax_us, "ours_us_rounds": our_us, "ratio_rounds": ratios,
                "jax_cpu_over_wall": statistics.median(r[p]["jax"]["methods"][m]["cpu_over_wall"] for r in rounds),
                "ours_cpu_over_wall": statistics.median(r[p]["ours"]["methods"][m]["cpu_over_wall"] for r in rounds),
                "finite": all(r[p][s]["methods"][m]["finite"] for r in rounds for s in ("jax", "ours")),
                "jax_setup_s": statistics.median(r[p]["jax"]["methods"][m]["setup_s"] for r in rounds),
            })
            if all(m in r[p].get("compiled", {}).get("methods", {}) for r in rounds):
                comp_us = [r[p]["compiled"]["methods"][m]["us_per_step"] for r in rounds]
                cr = [c / j for c, j in zip(comp_us, jax_us)]
                compile_s = [r[p]["compiled"]["methods"][m]["compile_s"] for r in rounds]
                saved = statistics.median(our_us) - statistics.median(comp_us)  # us per step
                rows[-1].update({"compiled_us": statistics.median(comp_us), "ratio_compiled": statistics.median(cr),
                                 "ratio_compiled_min": min(cr), "ratio_compiled_max": max(cr),
                                 "compile_s": statistics.median(compile_s[1:] or compile_s),
                                 "compile_s_first": compile_s[0],
                                 "amortize_steps": 1e6 * compile_s[0] / saved if saved > 0 else None})
    return rows


def _steps(n) -> str:
    return "never" if n is None else f"{n:,.0f}"


def markdown(report: dict) -> str:
    mi, a = report["machine"], report["args"]
    lines = [
        "# Time per outer step: benchmark_bilevel (JAX) vs bilevel.stochastic (torch)",
        "",
        f"Generated by `benchmarks/stochastic/jax/compare.py` on {report['date']} "
        f"({a['rounds']} paired round(s), {a['repeats']} timed blocks of 128 steps per side and round, "
        f"{a['threads']} thread(s), CPU pinning: {a['cpu'] if a['cpu'] is not None else 'none'}).",
        "",
        "| problem | method | JAX µs/step | ours eager µs/step | eager / JAX (min-max) | ours compiled µs/step "
        "| compiled / JAX (min-max) | compile s: round 1 / later | compiled pays off after (steps) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        flag = "" if r["finite"] else " (non-finite iterates)"
        comp = (f"{r['compiled_us']:.0f} | {r['ratio_compiled']:.2f} ({r['ratio_compiled_min']:.2f}-"
                f"{r['ratio_compiled_max']:.2f}) | {r['compile_s_first']:.0f} / {r['compile_s']:.0f} | "
                f"{_steps(r['amortize_steps'])}" if "compiled_us" in r else "- | - | - | -")
        lines.append(f"| {r['problem']} | {NAMES.get(r['method'], r['method'])} | {r['jax_us']:.0f} | "
                     f"{r['ours_us']:.0f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}){flag} | "
                     f"{comp} |")
    lines += [
        "",
        "Each cell is the median over rounds of each side's median time per step; the ratio is the median of the "
        "per-round ratios (the two sides of a round run one after the other, in alternating order). "
        + ("Compile: the wall time of the first compiled block of a subprocess, in round 1 (inductor's on-disk "
           "cache cold) and the median of the later rounds (cache warm); the compiled engine pays off after round "
           "1's compile time / (eager - compiled time per step) steps. " if a["compile_block"] else "")
        + "Process CPU time over wall time (1 = one busy thread, lower = the machine was shared): JAX "
        + ", ".join(f"{r['problem'][:4]}/{r['method']} {r['jax_cpu_over_wall']:.2f}" for r in report["rows"])
        + "; ours " + ", ".join(f"{r['problem'][:4]}/{r['method']} {r['ours_cpu_over_wall']:.2f}"
                                 for r in report["rows"]) + ".",
        "",
        "## Machine and versions",
        "",
        f"* CPU: {mi['cpu_model']} ({mi['logical_cpus']} logical CPUs, {mi['affinity_cpus']} usable); "
        f"{mi['platform']}; load average at start {mi['loadavg_start']}, at end {mi['loadavg_end']}",
        f"* JAX side: jax {report['versions']['jax'].get('jax')}, jaxlib {report['versions']['jax'].get('jaxlib')}, "
        f"benchopt {report['versions']['jax'].get('benchopt')}, numpy {report['versions']['jax'].get('numpy')}, "
        f"python {report['versions']['jax'].get('python')}; benchmark_bilevel {report['their_commit']}; "
        f"XLA_FLAGS `{report['xla_flags']}`",
        f"* ours: bilevel {report['versions']['ours'].get('bilevel')} (git {report['our_commit']}), torch "
        f"{report['versions']['ours'].get('torch')}, numpy {report['versions']['ours'].get('numpy')}, python "
        f"{report['versions']['ours'].get('python')}"
        + (f"; extra environment {', '.join(a['our_env'])}" if a["our_env"] else ""),
        "",
        "## What is timed",
        "",
        "* JAX: THEIR solver classes (`solvers/soba.py`, `saba.py`, `amigo.py` of benchmark_bilevel, imported at run "
        "time), default parameters (step_size 0.1, outer_ratio 1, batch_size 64, AmIGO n_inner_steps 10, "
        "eval_freq 128, random_state 1), `set_objective(...)` (jit and their `run_once(2)` warm-up), one more "
        "untimed epoch, then timed calls of their jitted `one_epoch` (a `lax.scan` over 128 steps), blocking on "
        "the result; time per step = epoch time / 128. Only the problem functions `f(inner_var, outer_var, start, "
        "batch_size)` (mean over a `lax.dynamic_slice`) are written here.",
        "* ours: `bilevel.stochastic.StochasticLoop(..., method=m, batch_size=64, inner_lr=0.1, outer_lr=0.1)` "
        "(`n_inner_steps=10` for AmIGO), eager torch, 128 untimed steps then timed blocks of 128 `step()` calls. "
        f"`batches=\"{a.get('batches', 'shuffled')}\"`. "
        + ("The eager objectives read a batch's rows as a slice of the data (`narrow`: a view, no copy), as theirs "
           "do with `lax.dynamic_slice`; the compiled ones gather them by index. "
           if a.get("rows", "gather") == "slice" else
           "The objectives gather the batch's rows by index: random sample indices with shuffled batches, ranges "
           "of consecutive samples with contiguous ones (theirs are contiguous slices, read with "
           "`lax.dynamic_slice`)."),
        "* Problems (float32, sizes of the benchmark): quadratic = `simulated` (1024/1024 samples, dims 100/100, "
        "rank-one per-sample matrices stored dense, as the benchmark stores them); quadratic_mean (when run) = the "
        "same arrays and function with the batch mean taken over the matrices first, 1/2 y'(mean A_i)y + ... "
        "(problem_data.dense_mean, on both sides: one pass over each of the batch's matrices; XLA makes this "
        "rewrite of `quadratic` itself); quadratic_factored (when run) = "
        "the same functions with the rank-one factors kept (the formulation of benchmarks/stochastic/problems.py, "
        "not the benchmark's); quadratic_stacked (when run) = the same factors stored as one (n, 600) table, "
        "`[u | w | p | q | a | b]`, so that a batch is one slice (theirs) or one gather (ours) of 64 rows, cut into "
        "its six column blocks, on both sides; datacleaning = the `mnist` "
        "shapes (20000 inner / 5000 outer samples, 784 features, 10 classes, linear model, x in R^20000, "
        "reg 0.2) with RANDOM features and labels (timing does not depend on the values); datacleaning64 = the "
        "same with 19968 / 4992 samples (multiples of the batch, 64, so that every iteration runs compiled; with "
        "20000 / 5000 the iterations that draw a smaller last batch run eagerly). The linear model's weights are "
        "classes x features and the logits are computed as "
        "(theta X_B')' on both sides: on this CPU that is 1.4-2x faster per step than X_B theta' for JAX too. "
        "Both sides use the "
        "same arrays (problem_data.py). Same step sizes, so both runs follow comparable (not identical) "
        "trajectories: the samplers differ.",
        "* Known design differences that show in the times: SABA's memory is per batch in theirs "
        "((n/64+2) rows per table) and per sample in ours (n rows: 3.4 GB on datacleaning, run with "
        "`max_memory_mb` raised); their whole epoch is one compiled XLA program; ours runs eager autograd per "
        "oracle call (Python and allocation overhead per step)"
        + (f", or, in the compiled columns, `compile_block={a['compile_block']}` (AmIGO: a sixteenth of it) "
           "iterations per `torch.compile` graph (bilevel.stochastic.compiled, its INDUCTOR_OPTIONS), the batches "
           "of a block drawn beforehand." if a["compile_block"] else " (eager only in this run)."),
    ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks of 128 steps per side, method and round")
    ap.add_argument("--problems", default="quadratic_factored,datacleaning64",
                    help="of quadratic, quadratic_mean, quadratic_factored, quadratic_stacked, datacleaning, "
                         "datacleaning64")
    ap.add_argument("--methods", default="soba,saba,amigo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile-block", type=int, default=64,
                    help="also time ours with compile_block=N (0: eager only)")
    ap.add_argument("--compiled-methods", default=None,
                    help="the methods timed compiled: METHOD (every problem) or PROBLEM:METHOD, comma-separated "
                         "(default: --methods)")
    ap.add_argument("--batches", choices=("shuffled", "contiguous"), default="shuffled",
                    help="our loop's fixed batches (StochasticLoop(batches=...)); theirs are contiguous slices")
    ap.add_argument("--rows", choices=("gather", "slice"), default="gather",
                    help="how our eager objectives read a batch: gathered by index, or (with --batches contiguous) "
                         "as a slice of the data, a view, like their lax.dynamic_slice; compiled: always gathered")
    ap.add_argument("--cpu", type=int, default=None, help="pin both sides to this CPU core")
    ap.add_argument("--our-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for our side only (e.g. MALLOC_MMAP_THRESHOLD_=67108864)")
    ap.add_argument("--jax-python", default=JAX_PY)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    ap.add_argument("--out", default=os.path.join(OUT_DIR, "jax_compare"), help="output path without extension")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the tables of a saved report (its .json) into "
                    "its .md, from its rounds (no timing)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            report = json.load(fh)
        problems, methods = report["args"]["problems"].split(","), report["args"]["methods"].split(",")
        report["rows"] = summarise(report["rounds"], problems, methods)
        with open(args.render, "w") as fh:
            json.dump(report, fh, indent=1)
        with open(args.render[:-len(".json")] + ".md", "w") as fh:
            fh.write(markdown(report))
        return
    if not os.path.exists(args.jax_python):
        raise SystemExit(f"{args.jax_python} not found: run benchmarks/stochastic/jax/setup.sh first")
    if args.rows == "slice" and args.batches != "contiguous":
        raise SystemExit("--rows slice needs --batches contiguous (a slice reads consecutive samples)")
    problems, methods = args.problems.split(","), args.methods.split(",")
    args.compiled_methods = args.compiled_methods or args.methods
    if not {e.split(":")[-1] for e in args.compiled_methods.split(",")} <= set(methods):
        raise SystemExit(f"--compiled-methods {args.compiled_methods} must be among --methods {args.methods}")
    load0 = os.getloadavg()
    rounds = []
    for r in range(args.rounds):
        res = {}
        for p in problems:
            order = ("jax", "ours") if r % 2 == 0 else ("ours", "jax")
            if args.compile_block and compiled_methods(args.compiled_methods, p):
                order = order + ("compiled",)
            res[p] = {}
            for side in order:
                res[p][side] = run_side(side, p, args)
                us = {m: round(v["us_per_step"]) for m, v in res[p][side]["methods"].items()}
                print(f"round {r + 1}/{args.rounds} {p:12s} {side:8s} us/step {us} "
                      f"({res[p][side]['wall_s']:.0f} s)", flush=True)
        rounds.append(res)
    rows = summarise(rounds, problems, methods)
    first = rounds[0][problems[0]]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "args": vars(args),
        "machine": {"cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
                    "affinity_cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "loadavg_start": [round(x, 2) for x in load0],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"jax": first["jax"]["versions"], "ours": first["ours"]["versions"]},
        "xla_flags": first["jax"]["XLA_FLAGS"], "their_commit": their_commit(), "our_commit": git_head(ROOT),
        "rows": rows, "rounds": rounds,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(report, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
