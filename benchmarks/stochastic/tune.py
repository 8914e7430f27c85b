"""Tune the step sizes of stochastic bilevel methods on a benchmark problem: the same grid for every method.

    python -m bilevel_benchmarks.stochastic.tune --problem logreg --methods all --time-budget 10 \\
        [--steps 0.5,0.125,0.03125] [--ratios 1,0.1,0.01] [--seed 100] [--select value_func] \\
        [--out benchmarks/results/stochastic/tuning] [--threads 1] [--log-points 10]

Each grid point sets ``inner_lr = step`` and ``outer_lr = step / ratio`` (the benchmark's ``step_size`` and
``outer_ratio``); the method's other options stay as :data:`problems.BenchProblem.params` has them. A point is one
run of :func:`run.run_one` with the solver seed ``--seed`` (not one of the seeds the results report) and the same
budget as the results; its score is the selection metric at the run's last log point (infinite when the run
diverged or failed). Per method the point with the lowest score wins. The selection metric is the problem's main
metric unless ``--select`` names another; a metric on the test set is refused (selection is on the training or
validation objective).

Writes ``OUT/<problem>/<method>/step<s>-ratio<r>.json`` per point (existing ones are kept, so an interrupted sweep
resumes; one run with another seed or budget is refused) and ``OUT/<problem>/tuned.json``: per method the chosen
parameters, their score, every point's score and the grid, seed, budget and metric they come from.
``python -m bilevel_benchmarks.stochastic.run --params OUT/<problem>/tuned.json`` then runs the chosen parameters.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from . import problems as P
from .run import _write, parse_methods, run_one

DEFAULT_OUT = str(Path("benchmarks") / "results" / "stochastic" / "tuning")
DEFAULT_STEPS = (0.5, 0.125, 0.03125)
DEFAULT_RATIOS = (1.0, 0.1, 0.01)


def parse_floats(text: str, name: str) -> List[float]:
    """``"0.5,0.1"`` -> [0.5, 0.1]; every value positive and finite."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} needs comma-separated numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{name} needs positive finite numbers, got {text!r}")
    return vals


def selection_metric(problem: P.BenchProblem, select: Optional[str]) -> str:
    """The metric the tuning minimizes: ``select`` or the problem's main metric, never a test-set metric."""
    metric = select or problem.main_metric
    if metric.startswith("test"):
        raise ValueError(f"cannot select step sizes on {metric!r}: tuning selects on a training or validation "
                         "metric (for datacleaning: val_error), never on the test set")
    return metric


def score(result: dict, metric: str) -> float:
    """The run's ``metric`` at its last log point; infinite when the run did not end ``ok`` or lacks the metric."""
    if result.get("status") != "ok" or not result.get("history"):
        return math.inf
    v = result["history"][-1].get(metric)
    return math.inf if v is None or not math.isfinite(v) else float(v)


def point_name(step: float, ratio: float) -> str:
    return f"step{step:g}-ratio{ratio:g}"


def tune(problem: P.BenchProblem, methods: Iterable[str], steps: Sequence[float], ratios: Sequence[float],
         seed: int, budget: float, out: str, log_points: int = 10, select: Optional[str] = None,
         quiet: bool = False) -> Dict[str, dict]:
    """Run the grid on ``problem`` (see the module docstring); return the per-method part of ``tuned.json``,
    which is written (merged with the methods an earlier call wrote)."""
    metric = selection_metric(problem, select)
    problem_name = problem.name
    root = Path(out) / problem_name
    tuned: Dict[str, dict] = {}
    meta = {"metric": metric, "seed": seed, "time_budget": budget, "steps": list(steps), "ratios": list(ratios),
            "log_points": log_points, "threads": torch.get_num_threads()}
    for method in methods:
        points = []
        for step in steps:
            for ratio in ratios:
                path = root / method / f"{point_name(step, ratio)}.json"
                if path.exists():
                    res = json.loads(path.read_text())
                    if (res["seed"], res["time_budget"]) != (seed, budget):
                        raise ValueError(f"{path} was run with seed {res['seed']} and budget {res['time_budget']:g} s, "
                                         f"not seed {seed} and {budget:g} s: use another --out or remove it")
                else:
                    params = {**problem.params[method], "inner_lr": step, "outer_lr": step / ratio}
                    res = run_one(problem, method, seed, budget, log_points, params=params,
                                  source=f"tuning grid point {point_name(step, ratio)}")
                    _write(path, res)
                s = score(res, metric)
                points.append({"step": step, "ratio": ratio, "score": s if math.isfinite(s) else None,
                               "status": res["status"], "params": res["params"]})
                if not quiet:
                    print(f"{problem_name} {method:8s} {point_name(step, ratio):22s} {res['status']:8s} "
                          f"{metric} {s:.6g}", flush=True)
        finite = [p for p in points if p["score"] is not None]
        best = min(finite, key=lambda p: p["score"]) if finite else None
        tuned[method] = {"params": best["params"] if best else dict(problem.params[method]),
                         "score": best["score"] if best else None, "chosen": best is not None, "meta": meta,
                         "points": [{k: p[k] for k in ("step", "ratio", "score", "status")} for p in points]}
    path = root / "tuned.json"
    old = json.loads(path.read_text())["methods"] if path.exists() else {}
    _write(path, {"problem": problem_name, "methods": {**old, **tuned}})
    return tuned


def load_tuned(path: str) -> Dict[str, dict]:
    """``{method: {"params", "source"}}`` from a ``tuned.json`` (each method's source from its own tuning call's
    grid, seed, budget and metric); methods whose every point failed are left out."""
    def source(m: dict) -> str:
        return (f"tuned here: grid step {{{', '.join(f'{v:g}' for v in m['steps'])}}} x outer ratio "
                f"{{{', '.join(f'{v:g}' for v in m['ratios'])}}}, seed {m['seed']}, {m['time_budget']:g} s, "
                f"final {m['metric']}")

    data = json.loads(Path(path).read_text())
    return {k: {"params": v["params"], "source": source(v["meta"])} for k, v in data["methods"].items()
            if v["chosen"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bilevel_benchmarks.stochastic.tune",
                                description=__doc__.split("\n")[0])
    p.add_argument("--problem", required=True, help=f"one of {', '.join(P.PROBLEMS)}")
    p.add_argument("--methods", default="all", help="all, or a comma-separated list")
    p.add_argument("--steps", default=",".join(f"{v:g}" for v in DEFAULT_STEPS), help="step_size grid")
    p.add_argument("--ratios", default=",".join(f"{v:g}" for v in DEFAULT_RATIOS), help="outer_ratio grid")
    p.add_argument("--seed", type=int, default=100, help="solver seed of the tuning runs")
    p.add_argument("--time-budget", type=float, required=True, help="seconds of solver steps per run")
    p.add_argument("--select", default=None, help="the metric to minimize (default: the problem's main metric)")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-points", type=int, default=10)
    a = p.parse_args(argv)
    if a.problem not in P.PROBLEMS:
        p.error(f"unknown problem {a.problem!r}; valid: {', '.join(P.PROBLEMS)}")
    if a.time_budget <= 0 or a.log_points < 1 or a.threads < 1 or a.seed < 0:
        p.error("--time-budget, --log-points and --threads must be positive, --seed non-negative")
    try:
        methods = parse_methods(a.methods)
        steps, ratios = parse_floats(a.steps, "--steps"), parse_floats(a.ratios, "--ratios")
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(a.threads)
    problem = P.make(a.problem, seed=0)
    try:
        tune(problem, methods, steps, ratios, a.seed, a.time_budget, a.out, a.log_points, a.select)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
