"""Curves and tables of the stochastic benchmark runs (:mod:`.run`): one PNG per problem and ``RESULTS.md``.

    python -m bilevel_benchmarks.stochastic.plot [--dir benchmarks/results/stochastic]

For every problem folder of ``--dir`` (``<problem>/<method>-seed<k>.json``): a figure ``<problem>.png`` with the
main metric against the time spent in the solver's steps and against the oracle calls (inner + outer, in samples
times derivative evaluations), per method the median over seeds and a 20-80 % band (each seed's curve is read on a
common geometric grid as the value of its last record at or before each grid point; a run contributes up to its last
record, and a grid point is drawn while at least half of the seeds have data there); and ``RESULTS.md`` with, per
problem, the method | median time to the target | median oracle calls to the target | final main metric (median) |
runs diverged | s per step table and the parameters used.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .problems import METHODS, PROBLEMS
from .run import DEFAULT_OUT


def load(directory: Path) -> Dict[str, Dict[str, List[dict]]]:
    """``{problem: {method: [run, ...]}}`` of the JSON files under ``directory``."""
    out: Dict[str, Dict[str, List[dict]]] = {}
    for path in sorted(directory.glob("*/*-seed*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out.setdefault(run["problem"], {}).setdefault(run["method"], []).append(run)
    for runs in out.values():
        for lst in runs.values():
            lst.sort(key=lambda r: r["seed"])
    return out


def _order(names, reference):
    known = [n for n in reference if n in names]
    return known + sorted(n for n in names if n not in reference)


def curve(run: dict, metric: str, axis: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(x, metric)`` of a run's records; x is ``time`` or ``oracles`` (inner + outer)."""
    hist = run.get("history", [])
    if axis == "time":
        xs = [h["time"] for h in hist]
    else:
        xs = [h["inner_oracles"] + h["outer_oracles"] for h in hist]
    ys = [np.nan if h.get(metric) is None else h[metric] for h in hist]
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def band(runs: List[dict], metric: str, axis: str, grid: np.ndarray, log: bool) -> Tuple[np.ndarray, ...]:
    """Median, 20 % and 80 % quantiles of the runs' step curves on ``grid`` (NaN where fewer than half have data;
    with ``log``, non-positive values are dropped)."""
    rows = []
    for run in runs:
        x, y = curve(run, metric, axis)
        ok = np.isfinite(y) & np.isfinite(x) & ((y > 0) if log else True)
        x, y = x[ok], y[ok]
        row = np.full(grid.shape, np.nan)
        if len(x):
            vals = np.log10(y) if log else y
            last = np.searchsorted(x, grid, side="right") - 1  # the last record at or before each grid point
            inside = (last >= 0) & (grid <= x[-1])
            row[inside] = vals[last[inside]]
        rows.append(row)
    rows = np.asarray(rows)
    enough = np.isfinite(rows).sum(0) >= max(1, math.ceil(len(runs) / 2))
    with np.errstate(all="ignore"), _quiet():
        med = np.nanmedian(rows, 0)
        lo, hi = np.nanpercentile(rows, 20, 0), np.nanpercentile(rows, 80, 0)
    for a in (med, lo, hi):
        a[~enough] = np.nan
    if log:
        med, lo, hi = 10 ** med, 10 ** lo, 10 ** hi
    return med, lo, hi


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        return self._w.__exit__(*a)


def to_target(run: dict, metric: str, target: float) -> Tuple[float, float]:
    """(time, oracle calls) of the first record at or below ``target``; (inf, inf) if none."""
    for h in run.get("history", []):
        v = h.get(metric)
        if v is not None and v <= target:
            return h["time"], h["inner_oracles"] + h["outer_oracles"]
    return math.inf, math.inf


def _final(run: dict, metric: str) -> Optional[float]:
    for h in reversed(run.get("history", [])):
        if h.get(metric) is not None:
            return h[metric]
    return None


def _median_or_none(values: List[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if abs(v) >= 1e4 or (0 < abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def figure(problem: str, runs: Dict[str, List[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(runs.values()))[0]
    metric, target, log = first["main_metric"], first["target"], first.get("log_scale", True)
    methods = _order(list(runs), METHODS)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.2))
    for ax, axis, label in ((axes[0], "time", "time in solver steps (s)"),
                            (axes[1], "oracles", "oracle calls (inner + outer, per sample)")):
        xs = np.concatenate([curve(r, metric, axis)[0] for lst in runs.values() for r in lst] or [np.ones(1)])
        pos = xs[np.isfinite(xs) & (xs > 0)]
        if not len(pos):
            continue
        grid = np.geomspace(pos.min(), pos.max(), 200)
        for i, m in enumerate(methods):
            med, lo, hi = band(runs[m], metric, axis, grid, log)
            if not np.isfinite(med).any():
                continue
            color = cmap(i % 10)
            ax.plot(grid, med, color=color, label=m, lw=1.6, ls=("-", "--", ":")[(i // 10) % 3])
            ax.fill_between(grid, lo, hi, color=color, alpha=0.15, lw=0)
        ax.axhline(target, color="k", ls="--", lw=0.8, label="target")
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.grid(True, which="major", alpha=0.3)
    n_seeds = max(len(v) for v in runs.values())
    fig.suptitle(f"{problem}: {metric}, median over {n_seeds} seed(s), 20-80 % band "
                 f"(budget {first['time_budget']:g} s per run)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.89, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sizes(info: dict) -> str:
    skip = {"target_rule", "init", "data"}
    return ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in info.items() if k not in skip)


def table(problem: str, runs: Dict[str, List[dict]]) -> List[str]:
    first = next(iter(runs.values()))[0]
    metric, target, info = first["main_metric"], first["target"], first.get("problem_info", {})
    seeds = sorted({r["seed"] for lst in runs.values() for r in lst})
    lines = [f"## {problem}", "",
             f"Data: {info.get('data', '?')}; {_sizes(info)}. Start: {info.get('init', '?')}.",
             f"Main metric `{metric}` (lower is better); target {metric} <= {_fmt(target, 4)} "
             f"({info.get('target_rule', '')}). Budget {first['time_budget']:g} s of solver steps per run, "
             f"solver seeds {', '.join(map(str, seeds))}, batch size {first['batch_size']}, {first['dtype']}, "
             f"{first['threads']} thread(s), torch {first['torch']}.", "",
             f"![{problem}]({problem}.png)", "",
             f"| method | median time to target (s) | median oracle calls to target | final {metric} (median) "
             f"| runs diverged | ms / step (median) |",
             "|---|---|---|---|---|---|"]
    for m in _order(list(runs), METHODS):
        lst = runs[m]
        hits = [to_target(r, metric, target) for r in lst]
        n_hit = sum(math.isfinite(t) for t, _ in hits)
        t_med = float(np.median([t for t, _ in hits]))
        o_med = float(np.median([o for _, o in hits]))
        reached = f" ({n_hit}/{len(lst)})"
        t_txt = ("not reached" if not math.isfinite(t_med) else _fmt(t_med)) + reached
        o_txt = ("not reached" if not math.isfinite(o_med) else f"{o_med:.3g}") + reached
        finals = [v for r in lst if r["status"] == "ok" and (v := _final(r, metric)) is not None]
        diverged = sum(r["status"] == "diverged" for r in lst)
        errors = sum(r["status"] == "error" for r in lst)
        div_txt = f"{diverged}/{len(lst)}" + (f" (+{errors} error)" if errors else "")
        sps = [1e3 * r["s_per_step"] for r in lst if r.get("s_per_step")]
        lines.append(f"| {m} | {t_txt} | {o_txt} | {_fmt(_median_or_none(finals), 4)} | {div_txt} | "
                     f"{_fmt(_median_or_none(sps))} |")
    msgs = sorted({f"{m}: {r['message']}" for m in runs for r in runs[m] if r["status"] == "error"})
    if msgs:
        lines += ["", "Errors: " + "; ".join(msgs[:5])]
    lines += ["", "Time and oracle calls to target are those of the first log point (a geometric grid of 40 points "
              "per run) at or below the target; the median counts runs that did not reach it as infinite, "
              "(k/n) is the number of runs that reached it.", "",
              "Parameters (`inner_lr` = the benchmark's step_size, `outer_lr` = step_size / outer_ratio; other "
              "options as named in bilevel.stochastic):", "",
              "| method | inner_lr | outer_lr | options | source |", "|---|---|---|---|---|"]
    for m in _order(list(runs), METHODS):
        r = runs[m][0]
        p = dict(r["params"])
        opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items()
                         if k not in ("inner_lr", "outer_lr")) or "defaults"
        lines.append(f"| {m} | {p['inner_lr']:g} | {p['outer_lr']:g} | {opts} | {r.get('params_source', '')} |")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bilevel_benchmarks.stochastic.plot",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    directory = Path(a.dir)
    data = load(directory)
    if not data:
        ap.error(f"no runs under {a.dir}")
    lines = ["# Stochastic bilevel solvers on benchmark_bilevel's problems", "",
             "Runs: `python -m bilevel_benchmarks.stochastic.run`; this file and the figures: "
             "`python -m bilevel_benchmarks.stochastic.plot`. Problems, metrics and parameters: "
             "`bilevel_benchmarks/stochastic/problems.py` (benchmarks/stochastic/problems.py in the repository); "
             "the benchmark they follow: notes/stochastic_solvers.md. Oracle calls count samples times derivative "
             "evaluations (bilevel.stochastic.Oracles). Times are the seconds spent in the solvers' steps; metrics "
             "are evaluated outside them.", ""]
    for problem in _order(list(data), PROBLEMS):
        figure(problem, data[problem], directory / f"{problem}.png")
        lines += table(problem, data[problem])
    (directory / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {len(data)} figure(s) and RESULTS.md under {a.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
