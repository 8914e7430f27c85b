"""Run stochastic bilevel methods on a benchmark problem under a wall-time budget: one JSON per (method, seed).

    python -m bilevel_benchmarks.stochastic.run --problem quadratic --methods all --seeds 0-4 --time-budget 60 \\
        [--out benchmarks/results/stochastic] [--threads 1] [--log-points 40]

The problem instance is fixed (built once, seed 0, and shared by every run); ``--seeds`` are the solvers' seeds
(batch draws and their own randomness). Each run steps a :class:`bilevel.stochastic.StochasticLoop` with the
method's parameters (:data:`problems.BenchProblem.params`: the benchmark's tuned values, or with ``--params`` those
chosen by :mod:`bilevel_benchmarks.stochastic.tune` on this problem) until the time spent in its
steps reaches the budget, and records ``loop.record(problem.metrics)`` at the start and at ``--log-points`` times on a
geometric grid from budget/1000 to the budget (metrics are not timed). A run whose iterates or metrics become
non-finite stops and is marked ``"diverged"``; one whose construction or step raises is marked ``"error"``. The
results go to ``OUT/<problem>/<method>-seed<k>.json``; runs whose file exists are skipped, so an interrupted
sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch

from . import problems as P

DEFAULT_OUT = os.path.join("benchmarks", "results", "stochastic")


def parse_seeds(text: str) -> List[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7] (ranges and lists combine: ``"0-2,5"``)."""
    seeds: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"empty seed range {part!r}")
            seeds.extend(range(lo, hi + 1))
        else:
            seeds.append(int(part))
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds needs non-negative integers, got {text!r}")
    return sorted(set(seeds))


def parse_methods(text: str) -> List[str]:
    if text.strip() == "all":
        return list(P.METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in P.METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; valid: all or a list of {', '.join(P.METHODS)}")
    return methods


def _finite(v) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


def _clean(rec: Dict[str, float]) -> Dict[str, Optional[float]]:
    """JSON-safe record: non-finite numbers become null."""
    return {k: (int(v) if k in ("step", "inner_oracles", "outer_oracles") else _finite(v)) for k, v in rec.items()}


def run_one(problem: P.BenchProblem, method: str, seed: int, budget: float, log_points: int = 40,
            params: Optional[dict] = None, source: Optional[str] = None) -> dict:
    """One run (see the module docstring); returns the JSON-ready result. ``params`` (with ``source``, where they
    come from) replace the problem's parameters of ``method``."""
    from bilevel import NonFiniteError
    from bilevel.stochastic import StochasticLoop

    params = dict(problem.params[method] if params is None else params)
    options = {k: v for k, v in params.items() if k not in ("inner_lr", "outer_lr")}
    grid = budget * np.geomspace(1e-3, 1.0, log_points)
    out = {"problem": problem.name, "method": method, "seed": seed, "time_budget": budget,
           "main_metric": problem.main_metric, "target": problem.target, "log_scale": problem.log_scale,
           "params": params, "params_source": problem.tuned.get(method, "") if source is None else source,
           "problem_info": problem.info,
           "batch_size": problem.batch_size, "dtype": str(problem.x0.dtype).replace("torch.", ""),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
           "status": "ok", "message": "", "history": []}
    wall = time.perf_counter()
    history = out["history"]
    loop = None
    try:
        loop = StochasticLoop(problem.upper, problem.lower, problem.x0, problem.y0, method=method,
                              n_upper=problem.n_upper, n_lower=problem.n_lower, batch_size=problem.batch_size,
                              seed=seed, inner_lr=params["inner_lr"], outer_lr=params["outer_lr"], **options)
        out["loop_config"] = loop.config

        def record() -> None:
            rec = loop.record(problem.metrics)
            history.append(_clean(rec))
            bad = [k for k, v in rec.items() if not math.isfinite(float(v))]
            if bad:
                raise NonFiniteError(f"non-finite {', '.join(bad)} at iteration {loop.t}")

        record()
        k = 0
        while loop.elapsed < budget:
            loop.step()
            loop.check_finite()
            if loop.elapsed >= grid[k]:
                record()
                while k < len(grid) - 1 and grid[k] <= loop.elapsed:
                    k += 1
        if history[-1]["step"] != loop.t:
            record()
    except NonFiniteError as e:
        out["status"], out["message"] = "diverged", str(e)
    except (ValueError, RuntimeError, MemoryError) as e:
        out["status"], out["message"] = "error", f"{type(e).__name__}: {e}"
    if loop is not None:
        out.update(steps=loop.t, elapsed=loop.elapsed, oracle_calls=loop.oracle_calls,
                   s_per_step=loop.elapsed / loop.t if loop.t else None)
    out["wall"] = time.perf_counter() - wall
    return out


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    os.replace(tmp, path)


def run(problem_name: str, methods: Iterable[str], seeds: Iterable[int], budget: float, out: str,
        log_points: int = 40, dtype: torch.dtype = torch.float32, quiet: bool = False,
        tuned: Optional[Dict[str, dict]] = None, problem: Optional[P.BenchProblem] = None) -> List[Path]:
    """Every (method, seed) of one problem; returns the JSON paths written (skipped ones excluded). ``tuned``
    (:func:`tune.load_tuned`): per method the parameters to run instead of the problem's, and their source;
    ``problem``: the instance of ``problem_name`` (default: built here)."""
    todo = [(m, s, Path(out) / problem_name / f"{m}-seed{s}.json") for m in methods for s in seeds]
    todo = [t for t in todo if not t[2].exists()]
    if not todo:
        if not quiet:
            print(f"{problem_name}: all runs done", flush=True)
        return []
    start = time.perf_counter()
    problem = problem or P.make(problem_name, seed=0, dtype=dtype)
    if not quiet:
        print(f"{problem_name}: built in {time.perf_counter() - start:.1f} s; target {problem.main_metric} <= "
              f"{problem.target:.4g}", flush=True)
    written = []
    for method, seed, path in todo:
        chosen = (tuned or {}).get(method, {})
        res = run_one(problem, method, seed, budget, log_points, chosen.get("params"), chosen.get("source"))
        _write(path, res)
        written.append(path)
        if not quiet:
            last = res["history"][-1] if res["history"] else {}
            sps = res.get("s_per_step")
            print(f"{problem_name} {method:8s} seed {seed}: {res['status']:8s} {res.get('steps', 0):7d} steps "
                  f"{'' if sps is None else f'{sps * 1e3:9.3f} ms/step'}  {problem.main_metric} "
                  f"{last.get(problem.main_metric)}  wall {res['wall']:.1f} s"
                  + (f"  [{res['message'][:120]}]" if res["message"] else ""), flush=True)
        gc.collect()
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bilevel_benchmarks.stochastic.run", description=__doc__.split("\n")[0])
    p.add_argument("--problem", required=True,
                   help=f"one of {', '.join(P.PROBLEMS)}, a comma-separated list, or all")
    p.add_argument("--methods", default="all", help="all, or a comma-separated list")
    p.add_argument("--seeds", default="0-4", help="solver seeds: 0-4, 0,3,7 ...")
    p.add_argument("--time-budget", type=float, required=True, help="seconds of solver steps per run")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--log-points", type=int, default=40)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--params", default=None,
                   help="tuned.json of bilevel_benchmarks.stochastic.tune: run its chosen parameters (one problem)")
    a = p.parse_args(argv)
    if a.time_budget <= 0 or a.log_points < 1 or a.threads < 1:
        p.error("--time-budget, --log-points and --threads must be positive")
    names = list(P.PROBLEMS) if a.problem == "all" else [n.strip() for n in a.problem.split(",") if n.strip()]
    try:
        methods, seeds = parse_methods(a.methods), parse_seeds(a.seeds)
        for n in names:
            if n not in P.PROBLEMS:
                raise ValueError(f"unknown problem {n!r}; valid: {', '.join(P.PROBLEMS)}")
        tuned = None
        if a.params:
            from .tune import load_tuned

            tuned = load_tuned(a.params)
            if len(names) != 1:
                raise ValueError("--params holds one problem's parameters: name one --problem")
    except (ValueError, OSError, KeyError) as e:
        p.error(str(e))
    torch.set_num_threads(a.threads)
    for name in names:
        run(name, methods, seeds, a.time_budget, a.out, a.log_points, getattr(torch, a.dtype), tuned=tuned)
    return 0


if __name__ == "__main__":
    sys.exit(main())
