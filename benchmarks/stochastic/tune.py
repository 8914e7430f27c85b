"""Tune the step sizes of stochastic bilevel methods on a benchmark problem: the same grid for every method.

    python -m bilevel_benchmarks.stochastic.tune --problem logreg --methods all --time-budget 10 \\
        [--steps 0.5,0.125,0.03125] [--ratios 1,0.1,0.01] [--seeds 100,101] [--select value_func] \\
        [--out benchmarks/results/stochastic/tuning] [--threads 1] [--log-points 10]

Each grid point sets ``inner_lr = step`` and ``outer_lr = step / ratio`` (the benchmark's ``step_size`` and
``outer_ratio``); the method's other options stay as :data:`problems.BenchProblem.params` has them. A point is one
run of :func:`run.run_one` per tuning seed (``--seeds``, solver seeds that the results do not report) with the same
budget as the results; a run's score is the selection metric at its last log point (infinite when the run diverged
or failed), and the point's score is the worst of its runs: a point that diverges on any tuning seed loses. Per
method the point with the lowest score wins. The selection metric is the problem's main metric unless ``--select``
names another; a metric on the test set is refused (selection is on the training or validation objective).

Writes ``OUT/<problem>/<method>/step<s>-ratio<r>-seed<k>.json`` per run (existing ones are kept, so an interrupted
sweep resumes, and a sweep with one more seed runs only that seed; one run with another budget is refused) and
``OUT/<problem>/tuned.json``: per method the chosen parameters, their score, every point's score (and each seed's)
and the grid, seeds, budget and metric they come from.
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
from .run import _write, parse_methods, parse_seeds, run_one

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


def point_name(step: float, ratio: float, seed: Optional[int] = None) -> str:
    """``step<s>-ratio<r>``, and ``-seed<k>`` for one run of the point (its file name)."""
    return f"step{step:g}-ratio{ratio:g}" + ("" if seed is None else f"-seed{seed}")


def tune(problem: P.BenchProblem, methods: Iterable[str], steps: Sequence[float], ratios: Sequence[float],
         seeds: Sequence[int], budget: float, out: str, log_points: int = 10, select: Optional[str] = None,
         quiet: bool = False) -> Dict[str, dict]:
    """Run the grid on ``problem`` (see the module docstring); return the per-method part of ``tuned.json``,
    which is written (merged with the methods an earlier call wrote)."""
    metric = selection_metric(problem, select)
    problem_name = problem.name
    root = Path(out) / problem_name
    tuned: Dict[str, dict] = {}
    seeds = [int(k) for k in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"the tuning seeds must be distinct non-negative integers, got {seeds}")
    meta = {"metric": metric, "seeds": seeds, "time_budget": budget, "steps": list(steps), "ratios": list(ratios),
            "log_points": log_points, "threads": torch.get_num_threads()}
    for method in methods:
        points = []
        for step in steps:
            for ratio in ratios:
                runs = [_point_run(problem, method, step, ratio, seed, budget, log_points, root) for seed in seeds]
                scores = [score(res, metric) for res in runs]
                s = max(scores)
                bad = [res["status"] for res in runs if res["status"] != "ok"]
                points.append({"step": step, "ratio": ratio, "score": s if math.isfinite(s) else None,
                               "scores": [v if math.isfinite(v) else None for v in scores],
                               "status": bad[0] if bad else "ok", "params": runs[0]["params"]})
                if not quiet:
                    print(f"{problem_name} {method:8s} {point_name(step, ratio):22s} {points[-1]['status']:8s} "
                          f"{metric} {s:.6g} (seeds {', '.join(f'{v:.4g}' for v in scores)})", flush=True)
        finite = [p for p in points if p["score"] is not None]
        best = min(finite, key=lambda p: p["score"]) if finite else None
        tuned[method] = {"params": best["params"] if best else dict(problem.params[method]),
                         "score": best["score"] if best else None, "chosen": best is not None, "meta": meta,
                         "points": [{k: p[k] for k in ("step", "ratio", "score", "scores", "status")}
                                    for p in points]}
    path = root / "tuned.json"
    old = json.loads(path.read_text())["methods"] if path.exists() else {}
    _write(path, {"problem": problem_name, "methods": {**old, **tuned}})
    return tuned


def _point_run(problem: P.BenchProblem, method: str, step: float, ratio: float, seed: int, budget: float,
               log_points: int, root: Path) -> dict:
    """The run of one grid point with one seed: its kept file, or a new run written to it."""
    path = root / method / f"{point_name(step, ratio, seed)}.json"
    if path.exists():
        res = json.loads(path.read_text())
        if (res["seed"], res["time_budget"]) != (seed, budget):
            raise ValueError(f"{path} was run with seed {res['seed']} and budget {res['time_budget']:g} s, "
                             f"not seed {seed} and {budget:g} s: use another --out or remove it")
        return res
    params = {**problem.params[method], "inner_lr": step, "outer_lr": step / ratio}
    res = run_one(problem, method, seed, budget, log_points, params=params,
                  source=f"tuning grid point {point_name(step, ratio)}")
    _write(path, res)
    return res


def load_tuned(path: str) -> Dict[str, dict]:
    """``{method: {"params", "source"}}`` from a ``tuned.json`` (each method's source from its own tuning call's
    grid, seed, budget and metric); methods whose every point failed are left out."""
    def source(m: dict) -> str:
        seeds = m.get("seeds", [m.get("seed")])  # files written before several tuning seeds existed: "seed"
        worst = ", worst over the seeds" if len(seeds) > 1 else ""
        return (f"tuned here: grid step {{{', '.join(f'{v:g}' for v in m['steps'])}}} x outer ratio "
                f"{{{', '.join(f'{v:g}' for v in m['ratios'])}}}, seed{'s' if len(seeds) > 1 else ''} "
                f"{', '.join(str(k) for k in seeds)}, {m['time_budget']:g} s, final {m['metric']}{worst}")

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
    p.add_argument("--seeds", default="100", help="solver seeds of the tuning runs: 100,101 or 100-101 (a point's "
                   "score is its worst over them)")
    p.add_argument("--time-budget", type=float, required=True, help="seconds of solver steps per run")
    p.add_argument("--select", default=None, help="the metric to minimize (default: the problem's main metric)")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-points", type=int, default=10)
    a = p.parse_args(argv)
    if a.problem not in P.PROBLEMS:
        p.error(f"unknown problem {a.problem!r}; valid: {', '.join(P.PROBLEMS)}")
    if a.time_budget <= 0 or a.log_points < 1 or a.threads < 1:
        p.error("--time-budget, --log-points and --threads must be positive")
    try:
        methods = parse_methods(a.methods)
        steps, ratios = parse_floats(a.steps, "--steps"), parse_floats(a.ratios, "--ratios")
        seeds = parse_seeds(a.seeds)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(a.threads)
    problem = P.make(a.problem, seed=0)
    try:
        tune(problem, methods, steps, ratios, seeds, a.time_budget, a.out, a.log_points, a.select)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
